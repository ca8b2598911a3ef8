#!/usr/bin/env bash
# The shmvm KVM lab runner (`make lab`): builds everything, boots one L1 Linux
# under QEMU TCG with nested SVM (a real /dev/kvm inside), runs every scenario
# in tests/lab/scenarios with QEMU microvm (reference) and shmvm as the L2 VMM,
# and turns the results into pass/fail.
#
# Environment:
#   LAB_VMMS=qemu,shmvm   L2 VMMs to run (default both; qemu alone is a reference-only run)
#   LAB_ONLY=a,b          only these scenarios
#   LAB_DUMP=all          print every L2 console, not only failed ones
#   LAB_L2EXTRA=a,b       extra L2 kernel parameters (comma separated), e.g. i8042.nokbd
#   LAB_L2DEBUG=1         L2 kernels log at debug level (slower: every console byte is a PIO exit)
#   LAB_TIMEOUT=1200      seconds for all L1 boots together
#   LAB_L1_RETRIES=1      if L1 itself dies (a panic of the L1 kernel), boot a fresh
#                         L1 for the unfinished scenarios this many times; each death
#                         is reported as a WARNING with the L1 console's last lines
#   LAB_L1_SILENCE=300    an L1 whose console stays silent this many seconds is hung
#                         (seen: nested-TCG stalls with QEMU L2 runs); it is stopped
#                         and handled like a dead L1 (a healthy run prints within its
#                         240 s run timeout)
#   LAB_SELFTEST_PANIC=name.vmm   make L1 panic as that run starts (tests the above)
#   SHMVM=path            use this shmvm binary instead of building it (make lab: build/shmvm)
#   IVSHMEM_TOOL=path     use this static ivshmem-tool instead of building it
# Output: build/lab/l1-console.log (everything), build/lab/consoles/<name>.<vmm>.log
# (each dumped L2 console), a result table, "N passed, N failed", the total time.
# Exit status: 0 only if every run passed; 1 on any failure or missing prerequisite.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
lab=$root/build/lab
start=$(date +%s.%N)
die() { echo "lab: FAIL: $*" >&2; exit 1; }

vmms=${LAB_VMMS:-qemu,shmvm}
for need in qemu-system-x86_64 cpio lz4 gzip cargo apt-get dpkg-deb; do
    command -v "$need" >/dev/null || die "missing prerequisite '$need' (run 'make deps')"
done
[ -x /bin/busybox ] || die "missing /bin/busybox (busybox-static; run 'make deps')"
qemu-system-x86_64 -accel help 2>/dev/null | grep -qx tcg || die "qemu-system-x86_64 lacks TCG"
qemu-system-x86_64 -cpu help 2>/dev/null | grep -q EPYC || die "qemu-system-x86_64 lacks the EPYC CPU model"

mkdir -p "$lab"
tests/lab/fetch.sh

if [ -n "${IVSHMEM_TOOL:-}" ]; then
    tool=$IVSHMEM_TOOL
else
    echo "lab: building ivshmem-tool (static)"
    RUSTFLAGS="-C target-feature=+crt-static" cargo build -q --release -p ivshmem-tool \
        --target x86_64-unknown-linux-gnu || die "building ivshmem-tool failed"
    tool=$root/target/x86_64-unknown-linux-gnu/release/ivshmem-tool
fi
{ ldd "$tool" 2>&1 || true; } | grep -q "not a dynamic" || die "$tool is not a static binary"

shmvm_bin=
if [[ ",$vmms," == *",shmvm,"* ]]; then
    if [ -n "${SHMVM:-}" ]; then
        shmvm_bin=$SHMVM
    else
        echo "lab: building shmvm (release)"
        cargo build -q --release -p vmm --bin shmvm || die "building shmvm failed"
        shmvm_bin=$root/target/release/shmvm
    fi
    [ -x "$shmvm_bin" ] || die "shmvm binary $shmvm_bin missing"
    "$shmvm_bin" --help >/dev/null 2>&1 || die "$shmvm_bin --help fails: not a working shmvm"
fi

guest/initramfs/build.sh "$lab/l2-initrd.gz" "$tool" "$lab/kernel/modules"
tests/lab/build-l1.sh "$lab/l1-initrd.lz4" "$lab/kernel" "$lab/l2-initrd.gz" "$tool" $shmvm_bin

base_append="console=ttyS0 reboot=t panic=-1 quiet lab.vmms=$vmms"
[ -n "${LAB_DUMP:-}" ] && base_append="$base_append lab.dump=$LAB_DUMP"
[ -n "${LAB_L2EXTRA:-}" ] && base_append="$base_append lab.l2extra=$LAB_L2EXTRA"
[ -n "${LAB_L2DEBUG:-}" ] && base_append="$base_append lab.l2debug=$LAB_L2DEBUG"
selftest=${LAB_SELFTEST_PANIC:-}

# The scenario names this run covers, and how many runs (scenario x VMM) it expects.
all_names=$(awk '!/^#/ && NF {print $1}' tests/lab/scenarios)
if [ -n "${LAB_ONLY:-}" ]; then
    for n in ${LAB_ONLY//,/ }; do
        grep -qx "$n" <<<"$all_names" || die "LAB_ONLY: no scenario '$n' in tests/lab/scenarios"
    done
    all_names=$(tr ',' '\n' <<<"$LAB_ONLY")
fi
# The VMMs a scenario runs with: vhost-user-blk (vub*) needs PCI, which QEMU
# microvm lacks, so those run with shmvm only (as in l1-init's runs_with).
vmms_of() {
    local extra
    extra=$(awk -v n="$1" '$1 == n {print $7}' tests/lab/scenarios)
    for v in ${vmms//,/ }; do
        if [[ ",$extra," =~ ,vub(-kill|-private)?, ]] && [ "$v" != shmvm ]; then continue; fi
        echo "$v"
    done
}
expected=0
for n in $all_names; do expected=$((expected + $(vmms_of "$n" | wc -l))); done
[ "$expected" -gt 0 ] || die "no scenario runs with LAB_VMMS=$vmms${LAB_ONLY:+ and LAB_ONLY=$LAB_ONLY}"

log=$lab/l1-console.log
: >"$log"
only=${LAB_ONLY:-}
boots=$((${LAB_L1_RETRIES:-1} + 1))
budget=${LAB_TIMEOUT:-1200}
crashes=()
l1_start=$(date +%s.%N)
# Stops the L1 QEMU (pid in $2) once its console log $1 has not grown for
# LAB_L1_SILENCE seconds; leaves the silence in $3.
watch_l1() {
    local limit=${LAB_L1_SILENCE:-300} pid age
    while sleep 5; do
        [ -s "$2" ] || continue
        pid=$(cat "$2")
        kill -0 "$pid" 2>/dev/null || return 0
        age=$(($(date +%s) - $(stat -c %Y "$1")))
        if [ "$age" -gt "$limit" ]; then
            echo "$age" >"$3"
            echo "lab: L1 console silent for ${age}s: stopping L1" >&2
            kill "$pid"
            return 0
        fi
    done
}
for boot in $(seq 1 "$boots"); do
    left=$(awk -v a="$l1_start" -v b="$(date +%s)" -v t="$budget" 'BEGIN {printf "%d", t - (b - a)}')
    if [ "$left" -le 30 ]; then crashes+=("no time left for L1 boot $boot"); break; fi
    append=$base_append
    [ -n "$only" ] && append="$append lab.only=$only"
    [ -n "$selftest" ] && append="$append lab.selftest_panic=$selftest" && selftest=
    blog=$lab/l1-boot$boot.log
    echo "lab: booting L1 #$boot (QEMU TCG, nested SVM)${only:+ for $only}; console in $blog"
    pidfile=$lab/l1.pid silence=$lab/l1-silent
    rm -f "$pidfile" "$silence"
    : >"$blog"
    watch_l1 "$blog" "$pidfile" "$silence" &
    watcher=$!
    set +e
    timeout -k 10 "$left" qemu-system-x86_64 -M q35 -accel tcg,thread=multi -smp 2 \
        -cpu EPYC,+svm,+npt -m 4096 -nodefaults -no-user-config -nographic -serial stdio \
        -kernel "$lab/kernel/vmlinuz" -initrd "$lab/l1-initrd.lz4" -append "$append" -no-reboot \
        -pidfile "$pidfile" </dev/null 2>&1 | stdbuf -oL tr -d '\r' | tee "$blog" |
        grep --line-buffered -E "^(LAB-INFO|LAB-SCENARIO|LAB-FATAL|LAB-SUMMARY)"
    l1_status=${PIPESTATUS[0]}
    set -e
    kill "$watcher" 2>/dev/null || true
    wait "$watcher" 2>/dev/null || true
    cat "$blog" >>"$log"
    grep -q "^LAB-END" "$blog" && break
    # L1 died (a kernel panic in L1, or the time ran out): say where, show
    # its last lines, and resume the unfinished scenarios in a fresh L1.
    running=$(grep "^LAB-START " "$blog" | tail -n1 | sed 's/^LAB-START //')
    hung=
    [ -s "$silence" ] && hung=", stopped after $(cat "$silence") s of silence"
    crashes+=("L1 boot $boot ended without LAB-END (QEMU status $l1_status${running:+, during $running}$hung)")
    echo "== L1 boot $boot ended without LAB-END; its last 40 lines =="
    tail -n 40 "$blog"
    [ "$l1_status" -eq 124 ] && break
    remaining=
    for n in $all_names; do
        for v in $(vmms_of "$n"); do
            grep -q "^LAB-SCENARIO name=$n vmm=$v " "$log" || { remaining="$remaining,$n"; break; }
        done
    done
    only=${remaining#,}
    [ -n "$only" ] || break
done
l1_s=$(awk -v a="$l1_start" -v b="$(date +%s.%N)" 'BEGIN {print b - a}')

# Keep each dumped L2 console as its own file.
rm -rf "$lab/consoles" && mkdir -p "$lab/consoles"
awk -v dir="$lab/consoles" '
    /^LAB-CONSOLE-BEGIN / { f = dir "/" $2 ".log"; next }
    /^LAB-CONSOLE-END /   { close(f); f = ""; next }
    f != "" { print > f }' "$log"

# The last result of each run (a resumed L1 repeats a partly done scenario).
results=$lab/results.txt
grep "^LAB-SCENARIO" "$log" | awk '{k = $2 " " $3; if (!(k in line)) order[++n] = k; line[k] = $0}
    END {for (i = 1; i <= n; i++) print line[order[i]]}' >"$results" || true
passed=$(grep -c "result=PASS" "$results" || true)
failed=$(grep -c "result=FAIL" "$results" || true)
problems=()
grep -q "^LAB-FATAL" "$log" && problems+=("$(grep -m1 '^LAB-FATAL' "$log")")
grep -q "^LAB-END" "$blog" || problems+=("the last L1 boot ended without LAB-END (crashed or timed out)")
[ $((passed + failed)) -eq "$expected" ] || problems+=("$((passed + failed)) of $expected runs reported")

echo
echo "== KVM lab results (L2 boot: VMM start to L2 init, as seen from L1) =="
printf '%-18s %-6s %-5s %8s %8s  %s\n' scenario vmm result init_s exit_s detail
while read -r _ rest; do
    get() { echo "$rest" | tr ' ' '\n' | sed -n "s/^$1=//p" | head -n1; }
    detail=$(echo "$rest" | sed -n 's/.* reason=//p')
    if [ -z "$detail" ]; then
        detail="kernel_init_s=$(get kernel_init_s)"
        bar2=$(get bar2_addr)
        if [ -n "$bar2" ]; then detail="$detail bar2=$bar2 guest_MBps(w/r)=$(get guest_write_MBps)/$(get guest_read_MBps)"; fi
        vda=$(get vda_sectors)
        if [ -n "$vda" ]; then detail="$detail vda=${vda}s queues=$(get vda_queues) q0_desc=$(get q0_desc) write_MBps=$(get vda_write_MBps) req_irqs=$(get vda_req_irqs)"; fi
        killed=$(get killed_at_s)
        if [ -n "$killed" ]; then detail="$detail back-end killed at ${killed}s"; fi
        err=$(get error)
        if [ -n "$err" ]; then detail="refused: ${err//_/ }"; fi
    fi
    printf '%-18s %-6s %-5s %8s %8s  %s\n' "$(get name)" "$(get vmm)" "$(get result)" "$(get init_s)" "$(get exit_s)" "$detail"
done <"$results"
if [ "$failed" -gt 0 ]; then
    echo "L2 consoles of failed runs: $(ls "$lab/consoles" | sed "s|^|$lab/consoles/|" | tr '\n' ' ')"
fi
# L2 boot to init side by side: median per VMM over the runs that got there.
for v in ${vmms//,/ }; do
    grep " vmm=$v " "$results" | sed -n 's/.* init_s=\([0-9.]*\) .*/\1/p' | sort -n |
        awk -v v="$v" '{a[NR] = $1} END {
            if (NR) printf "lab: L2 boot to init with %s: median %.1f s (min %.1f, max %.1f, %d runs)\n",
                v, (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2), a[1], a[NR], NR }'
done
l1_ready=$(sed -n 's/.*LAB-INFO l1_ready_s=\([0-9.]*\).*/\1/p' "$log" | head -n1)
[ -n "$l1_ready" ] && echo "lab: L1 kernel boot to its init: ${l1_ready} s"
for c in "${crashes[@]}"; do echo "lab: WARNING: $c"; done
for p in "${problems[@]}"; do echo "lab: FAIL: $p"; done
total=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {print b - a}')
printf 'lab: L1 run %.1f s, total %.1f s (budget 900 s)\n' "$l1_s" "$total"
awk -v t="$total" 'BEGIN {exit !(t > 900)}' && echo "lab: WARNING: over the 15-minute budget"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ ${#problems[@]} -eq 0 ]
