// The page's own words, both languages; state words come from the server (/ui/vocabulary.json).
const WORDS = {
  zh: {
    filter: "状态筛选", all: "全部", prev: "上一页", next: "下一页", page: "第 {page}/{pages} 页, 共 {total} 个任务",
    id: "任务 ID", state: "状态", steps: "步骤", begin: "开始", end: "结束", ttl: "保留", index: "序号",
    name: "名称", exit_code: "退出码", duration: "耗时", actions: "操作", output: "输出",
    submit_title: "提交任务", mode: "模式", sequential: "顺序", parallel: "并行", dag: "DAG",
    task_id: "ID (可选)", submit: "提交", kill: "终止", pause: "暂停", resume: "继续", delete: "删除",
    running_count: "执行中 {n}", failed_count: "失败 {n}", token_prompt: "服务器需要令牌 (只保存在本标签页的会话存储中):",
    ok: "确定", deleted: "已删除", done: "成功", no_output: "(无输出)", not_found: "任务不存在或已过期",
    steps_placeholder: '[{"command_type": "sh", "command_content": "echo hello"}]', mode_word: "模式",
    lost: "连接中断, 正在重连…", back: "返回列表", failed: "失败",
  },
  en: {
    filter: "State", all: "all", prev: "Previous", next: "Next", page: "page {page}/{pages}, {total} tasks",
    id: "Task ID", state: "State", steps: "Steps", begin: "Start", end: "End", ttl: "TTL", index: "#",
    name: "Name", exit_code: "Exit code", duration: "Duration", actions: "Actions", output: "Output",
    submit_title: "Submit a task", mode: "Mode", sequential: "sequential", parallel: "parallel", dag: "DAG",
    task_id: "ID (optional)", submit: "Submit", kill: "Kill", pause: "Pause", resume: "Resume", delete: "Delete",
    running_count: "running {n}", failed_count: "failed {n}", token_prompt: "The server needs a token (kept in this tab's session storage only):",
    ok: "OK", deleted: "deleted", done: "success", no_output: "(no output)", not_found: "the task does not exist or has expired",
    steps_placeholder: '[{"command_type": "sh", "command_content": "echo hello"}]', mode_word: "mode",
    lost: "connection lost, reconnecting…", back: "Back to the list", failed: "failed",
  },
};

let current = localStorage.getItem("osreapi.lang") === "en" ? "en" : "zh";

export function lang() { return current; }

export function setLang(value) {
  current = value === "en" ? "en" : "zh";
  localStorage.setItem("osreapi.lang", current);
  document.documentElement.lang = current;
}

export function t(key, values = {}) {
  const text = WORDS[current][key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => String(values[name] ?? ""));
}

// Fill every element that names its word with data-t.
export function translatePage() {
  document.documentElement.lang = current;
  for (const el of document.querySelectorAll("[data-t]")) el.textContent = t(el.dataset.t);
}

// A date in the browser's zone and language.
export function localTime(iso) {
  if (!iso) return "";
  return new Date(iso).toLocaleString(current === "zh" ? "zh-CN" : "en-GB", { hour12: false });
}

// A Go duration ("47h59m46.1s", "1m30s", "500ms") in seconds.
export function goSeconds(text) {
  if (!text) return null;
  const units = { h: 3600, m: 60, s: 1, ms: 0.001, us: 1e-6, "µs": 1e-6, ns: 1e-9 };
  let total = 0;
  for (const [, num, unit] of text.matchAll(/([0-9.]+)(ms|us|µs|ns|h|m|s)/g)) total += parseFloat(num) * units[unit];
  return total;
}

export function shortDuration(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.max(0, Math.round(seconds));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), rest = s % 60;
  return h ? `${h}h${m}m` : m ? `${m}m${rest}s` : `${rest}s`;
}
