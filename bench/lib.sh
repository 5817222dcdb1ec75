# Shared helpers for the bench scripts: tool installs, port checks, one wrk
# measurement with the server's CPU time, and the median summary.
# Expects: $work (scratch folder), $TOKEN, $CONNS, $DURATION.

need() { # command debian-package
  command -v "$1" >/dev/null && return
  [ -n "${APT_UPDATED:-}" ] || { apt-get update -qq; APT_UPDATED=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
}

ports_free() { # port...
  local port
  for port in "$@"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "port $port is already in use: stop whatever listens there first" >&2; exit 1
    fi
  done
}

# The routes folder every bench gateway serves: one prefix, `/api`, with
# HS256 auth required, in front of the upstream on 127.0.0.1:$1. Also an empty
# plugins folder, as in a normal deployment: with none, a gateway would watch
# for one to appear, and wake on every write in its folder.
bench_routes() { # upstream-port
  mkdir -p "$work/routes" "$work/plugins"
  cat > "$work/routes/bench.toml" <<EOF
service = "bench-upstream"
upstream = "http://127.0.0.1:$1"

[[route]]
prefix = "/api"
auth = "required"
EOF
}

# $work/<name>.conf for one nginx worker in the foreground on 127.0.0.1:port;
# `http-extra` goes in the http block, `server-body` in the server block.
nginx_conf() { # name port http-extra server-body
  cat > "$work/$1.conf" <<EOF
worker_processes 1;
master_process off;
daemon off;
pid $work/$1.pid;
error_log $work/$1.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/$1-body;
  proxy_temp_path $work/$1-proxy;
  keepalive_requests 1000000;
  $3
  server {
    listen 127.0.0.1:$2;
    keepalive_requests 1000000;
    $4
  }
}
EOF
}

# The fast upstream every bench proxies to: nginx `return 200`, in
# $work/upstream.conf.
fast_upstream_conf() { # port
  nginx_conf upstream "$1" "" 'location / { return 200 "ok\n"; }'
}

# nginx `proxy_pass` to the upstream on 127.0.0.1:$2, setting the headers
# Gatehouse's contract sets, in $work/proxy.conf: the proxy every bench
# compares the gateway against.
nginx_proxy_conf() { # port upstream-port
  nginx_conf proxy "$1" \
    "upstream up { server 127.0.0.1:$2; keepalive 64; keepalive_requests 1000000; }" \
    'location / {
      proxy_pass http://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-User-ID "42";
      proxy_set_header X-User-Tier "pro";
      proxy_set_header X-Forwarded-Host $host;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Request-ID $request_id;
      add_header X-Request-ID $request_id;
    }'
}

# A fast upstream (nginx `return 200`, config in $work/upstream.conf) and a
# gateway config ($work/gatehouse.toml) whose routes put a plugin (default
# the `hello` plugin on /api/v1/hello) on a prefix and proxy the rest of /api
# to that upstream.
plugin_setup() { # upstream-port gateway-port admin-port [plugin.wasm prefix]
  local UP_PORT=$1 GH_PORT=$2 ADMIN_PORT=$3 wasm=${4:-plugins/hello.wasm} prefix=${5:-/api/v1/hello}
  fast_upstream_conf "$UP_PORT"

  mkdir -p "$work/routes" "$work/plugins"
  cp "$wasm" "$work/plugins/"
  cat > "$work/routes/bench.toml" <<ROUTES
service = "bench-upstream"
upstream = "http://127.0.0.1:$UP_PORT"

[[route]]
prefix = "/api"
auth = "required"

[[route]]
prefix = "$prefix"
auth = "required"
plugin = "$(basename "$wasm" .wasm)"
ROUTES
  cat > "$work/gatehouse.toml" <<CONFIG
[server]
listen = "127.0.0.1:$GH_PORT"
admin = "127.0.0.1:$ADMIN_PORT"
[plugins]
cache_dir = "cache"
CONFIG
}

# The Python starter (`gatehouse plugin new --lang python`) built with the
# pinned componentize-py (pip-installed when missing) into $1/py.wasm.
COMPONENTIZE_PY=0.25.1
python_plugin() { # dir
  if ! componentize-py --version 2>/dev/null | grep -q "$COMPONENTIZE_PY"; then
    python3 -m pip install --quiet --disable-pip-version-check "componentize-py==$COMPONENTIZE_PY"
  fi
  ./target/release/gatehouse plugin new py --lang python --dir "$1" >/dev/null
  (cd "$1" && componentize-py -d wit -w route-handler componentize app -o py.wasm >/dev/null)
}

# Sets `order` to `targets` in the order round $1 runs them: as listed on odd
# rounds, reversed on even ones, so no target always runs first (or last).
round_order() { # round
  local i
  order=("${targets[@]}")
  if (($1 % 2 == 0)); then
    order=()
    for ((i = ${#targets[@]} - 1; i >= 0; i--)); do order+=("${targets[i]}"); done
  fi
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
sys_ticks() { awk '{print $15}' "/proc/$1/stat"; }

# One measurement: name url pid ("-" for none) → prints a line and appends
# "name rps p99_us cpu_us_per_req" to $work/results.
measure() {
  local name=$1 url=$2 pid=$3 before=0 after=0 sys_before=0 sys_after=0 out rps p99 reqs cpu_us=- sys_us=- ticks
  ticks=$(getconf CLK_TCK)
  [ "$pid" = - ] || { before=$(cpu_ticks "$pid"); sys_before=$(sys_ticks "$pid"); }
  out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H "Authorization: Bearer $TOKEN" "$url")
  [ "$pid" = - ] || { after=$(cpu_ticks "$pid"); sys_after=$(sys_ticks "$pid"); }
  rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  p99=$(awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); print v} else if (v ~ /ms$/) {sub(/ms/,"",v); print v*1000} else {sub(/s/,"",v); print v*1000000}}' <<<"$out")
  [ "$pid" = - ] || cpu_us=$(awk -v d=$((after - before)) -v t="$ticks" -v n="$reqs" 'BEGIN {printf "%.1f", d * 1e6 / t / n}')
  [ "$pid" = - ] || sys_us=$(awk -v d=$((sys_after - sys_before)) -v t="$ticks" -v n="$reqs" 'BEGIN {printf "%.1f", d * 1e6 / t / n}')
  if grep -q "Non-2xx" <<<"$out"; then echo "  $name: non-2xx responses!" >&2; fi
  echo "$name $rps $p99 $cpu_us $sys_us" >> "$work/results"
  printf '  %-22s %10s req/s   p99 %8s µs   CPU %6s µs/req (kernel %s)\n' "$name" "$rps" "$p99" "$cpu_us" "$sys_us"
}

# Medians per name, then one ratio line per "label:a:b" argument (a over b):
# throughput, p99, CPU per request, and its user-space part alone (the
# kernel's part includes waking the load generator, which depends on how
# idle its core is as much as on the server).
summarize() {
  local IFS='|'
  awk -v ratios="$*" '
    { rps[$1] = rps[$1] " " $2; p99[$1] = p99[$1] " " $3; cpu[$1] = cpu[$1] " " $4; sys[$1] = sys[$1] " " $5
      if ($4 != "-") usr[$1] = usr[$1] " " ($4 - $5)
      if (!seen[$1]++) order[++n] = $1 }
    function median(list,   a, k, i, j, t) {
      k = split(list, a, " ")
      for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
      return a[int((k + 1) / 2)]
    }
    END {
      for (i = 1; i <= n; i++) { name = order[i]; r[name] = median(rps[name]); p[name] = median(p99[name]); c[name] = median(cpu[name])
        u[name] = median(usr[name]); k[name] = median(sys[name])
        printf "  %-22s %10.0f req/s   p99 %8.0f µs   CPU %6s µs/req", name, r[name], p[name], c[name]
        if (c[name] != "-") printf " (user %.1f, kernel %s)", u[name], k[name]
        printf "\n" }
      print ""
      m = split(ratios, list, "|")
      for (i = 1; i <= m; i++) { split(list[i], f, ":")
        printf "%s: throughput %.2f×, p99 %.2f×, CPU per request %.2f× (user %.2f×)\n", f[1], r[f[2]] / r[f[3]], p[f[2]] / p[f[3]], c[f[2]] / c[f[3]], u[f[2]] / u[f[3]] }
    }' "$work/results"
}

# Waits up to $2 seconds (default 20) until no plugin of the gateway whose
# admin API is on port $1 is being optimized: a benchmark measures the
# optimized code, not the baseline code that serves while it compiles.
wait_optimized() { # admin-port [seconds]
  for _ in $(seq $((${2:-20} * 2))); do
    curl -s "http://127.0.0.1:$1/admin/plugins" | grep -q '"optimizing":true' || return 0
    sleep 0.5
  done
}
