// The page's own words, both languages; state words come from the server (/ui/vocabulary.json).
const WORDS = { // key: [中文, English]
  filter: ["状态筛选", "State"],
  all: ["全部", "all"],
  prev: ["上一页", "Previous"],
  next: ["下一页", "Next"],
  page: ["第 {page}/{pages} 页, 共 {total} 个任务", "page {page}/{pages}, {total} tasks"],
  id: ["任务 ID", "Task ID"],
  state: ["状态", "State"],
  steps: ["步骤", "Steps"],
  begin: ["开始", "Start"],
  end: ["结束", "End"],
  ttl: ["保留", "TTL"],
  index: ["序号", "#"],
  name: ["名称", "Name"],
  exit_code: ["退出码", "Exit code"],
  duration: ["耗时", "Duration"],
  actions: ["操作", "Actions"],
  output: ["输出", "Output"],
  submit_title: ["提交任务", "Submit a task"],
  mode: ["模式", "Mode"],
  sequential: ["顺序", "sequential"],
  parallel: ["并行", "parallel"],
  dag: ["DAG", "DAG"],
  task_id: ["ID (可选)", "ID (optional)"],
  submit: ["提交", "Submit"],
  kill: ["终止", "Kill"],
  pause: ["暂停", "Pause"],
  resume: ["继续", "Resume"],
  delete: ["删除", "Delete"],
  running_count: ["执行中 {n}", "running {n}"],
  failed_count: ["失败 {n}", "failed {n}"],
  token_prompt: ["服务器需要令牌 (只保存在本标签页的会话存储中):", "The server needs a token (kept in this tab's session storage only):"],
  ok: ["确定", "OK"],
  not_found: ["任务不存在或已过期", "the task does not exist or has expired"],
  steps_placeholder: ['[{"command_type": "sh", "command_content": "echo hello"}]', '[{"command_type": "sh", "command_content": "echo hello"}]'],
  mode_word: ["模式", "mode"],
  failed: ["失败", "failed"],
};

let current = localStorage.getItem("osreapi.lang") === "en" ? "en" : "zh";

export function lang() { return current; }

export function setLang(value) {
  current = value === "en" ? "en" : "zh";
  localStorage.setItem("osreapi.lang", current);
  document.documentElement.lang = current;
}

export function t(key, values = {}) {
  const text = WORDS[key]?.[current === "en" ? 1 : 0] ?? key;
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
