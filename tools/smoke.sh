#!/bin/sh
# The seed README's curl examples, translated from cmd/powershell to sh, against a running server.
# Usage: tools/smoke.sh [URL]   (default http://127.0.0.1:2376). Needs only sh and curl.
set -u
URL=${1:-http://127.0.0.1:2376}
URL=${URL%/}
failures=0

fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

if ! curl -s -o /dev/null "$URL/healthz"; then
    echo "smoke: cannot reach $URL: start a server first, or give its URL (tools/smoke.sh URL)" >&2
    exit 2
fi

# submit BODY [QUERY] -> prints the task id. It runs in $(...): its failure is told on stderr and
# counted by the caller (a count made in the subshell would be lost).
submit() {
    answer=$(curl -s -XPOST "$URL/$2" -d "$1")
    case "$answer" in
        *'"code":0'*) ;;
        *) echo "FAIL: submit $2 answered $answer" >&2; return 1 ;;
    esac
    echo "$answer" | sed -n 's/.*"id":"\([^"]*\)".*/\1/p'
}

# wait_code ID CODE: poll GET /ID (at most 30 s) until it is no longer running, then check its code.
wait_code() {
    i=0
    while [ $i -lt 300 ]; do
        answer=$(curl -s "$URL/$1")
        case "$answer" in
            *'"code":1001'*) sleep 0.1; i=$((i + 1)) ;;
            *) break ;;
        esac
    done
    case "$answer" in
        *"\"code\":$2,"*) echo "ok: task $1 code $2" ;;
        *) fail "task $1: expected code $2, got $answer" ;;
    esac
}

# 顺序执行 (sequential)
if id=$(submit '[
    {"command_type":"sh","command_content":"echo host=$envhost","env_vars":["envhost=www.q1.com","env2=value2"]},
    {"command_type":"bash","command_content":"sleep 1","env_vars":["env1=value1","env2=value2"]},
    {"command_type":"sh","command_content":"echo host=$envhost","env_vars":["envhost=baidu.com"]}
]' ''); then wait_code "$id" 0; else failures=$((failures + 1)); fi

# 并行执行 (parallel, the seed's ansync spelling)
if id=$(submit '[
    {"command_type":"sh","command_content":"echo host=$envhost","env_vars":["envhost=www.q1.com","env2=value2"]},
    {"command_type":"bash","command_content":"sleep 1","env_vars":["env1=value1","env2=value2"]},
    {"command_type":"sh","command_content":"echo host=$envhost","env_vars":["envhost=baidu.com"]}
]' '?ansync=true'); then wait_code "$id" 0; else failures=$((failures + 1)); fi

# 自定义编排执行 (DAG)
if id=$(submit '[
    {"name":"step0","command_type":"sh","command_content":"echo ping","env_vars":["env1=a","env2=b","env3=c"]},
    {"name":"step1","command_type":"sh","command_content":"echo curl","env_vars":["env1=a"],"depends_on":["step0"]},
    {"name":"step2","command_type":"sh","command_content":"env","env_vars":["env1=a"],"depends_on":["step0"]}
]' '?ansync=true'); then wait_code "$id" 0; else failures=$((failures + 1)); fi

# 执行失败 (failure: code 1002, message names step 1)
if id=$(submit '[{"command_type":"sh","command_content":"echo one"},{"command_type":"sh","command_content":"exit 100"}]' '')
then wait_code "$id" 1002; else failures=$((failures + 1)); fi
case "$(curl -s "$URL/$id")" in
    *'"message":"1, 执行失败"'*'exit status 100'*) echo "ok: failure message" ;;
    *) fail "failure message of $id" ;;
esac

# 参数不全 (bad parameters) and 不存在 (unknown id)
case "$(curl -s -XPOST "$URL" -d '[{"command_type":"sh"}]')" in
    *'"code":400'*) echo "ok: bad parameters answer 400" ;;
    *) fail "bad parameters" ;;
esac
case "$(curl -s "$URL/00000000-0000-0000-0000-000000000000")" in
    *'"code":1003'*) echo "ok: unknown id answers 1003" ;;
    *) fail "unknown id" ;;
esac

# 获取当前所有任务 (list, each sort)
for sort in '' '?sort=end' '?sort=ttl'; do
    case "$(curl -s "$URL/$sort")" in
        *'"code":0'*'"tasks":['*) echo "ok: list $sort" ;;
        *) fail "list $sort" ;;
    esac
done

if [ "$failures" -ne 0 ]; then
    echo "smoke: $failures failure(s)"
    exit 1
fi
echo "smoke: all passed"
