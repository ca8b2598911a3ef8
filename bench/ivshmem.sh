#!/usr/bin/env bash
# make bench-ivshmem: the test kernel, in ring 3, writes then reads N MiB
# (default 64) through ivshmem BAR2 and through ordinary guest RAM; a host
# process runs the same loops and a memcpy over N MiB. RUNS (default 5)
# rounds alternate VM and host; the table shows medians and their ratios.
# Needs /dev/kvm, target/release/{shmvm,host-bandwidth}, build/guest/testkernel.
set -euo pipefail
cd "$(dirname "$0")/.."
MIB=${MIB:-64}
RUNS=${RUNS:-5}
SHMVM=${SHMVM_BIN:-target/release/shmvm}
HOSTBW=target/release/host-bandwidth
KERNEL=${SHMVM_TESTKERNEL:-build/guest/testkernel}
for f in "$SHMVM" "$HOSTBW" "$KERNEL"; do
    [[ -x $f || -f $f ]] || { echo "bench-ivshmem: $f is missing (make build)" >&2; exit 1; }
done
[[ -r /dev/kvm && -w /dev/kvm ]] || { echo "bench-ivshmem: needs /dev/kvm" >&2; exit 1; }

val() { sed -n "s/.*$1=\([0-9]*\).*/\1/p" <<<"$2" | head -1; }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2)}'; }

# One VM run: prints "BAR2_W BAR2_R RAM_W RAM_R"; extra args pick guest RAM.
vm_run() {
    local out exits bar2 ram
    out=$("$SHMVM" -kernel "$KERNEL" -m $((MIB * 2 + 64))M -serial stdio -device isa-debug-exit,iobase=0xf4,iosize=4 \
        -object memory-backend-shm,id=bench,size=${MIB}M -device ivshmem-plain,memdev=bench \
        -append "shmvm.test=ivshmem-bench shmvm.bench_mib=$MIB" --stats "$@" 2>&1) || true
    grep -q 'verdict=pass' <<<"$out" || { echo "bench-ivshmem: guest failed:" >&2; echo "$out" >&2; exit 1; }
    exits=$(sed -n 's/.*bar2 exits \([0-9]*\).*/\1/p' <<<"$out")
    [[ $exits == 0 ]] || { echo "bench-ivshmem: $exits VM exits caused by BAR2" >&2; exit 1; }
    bar2=$(grep 'bench bar2' <<<"$out"); ram=$(grep 'bench ram' <<<"$out")
    echo "$(val write_mbps "$bar2") $(val read_mbps "$bar2") $(val write_mbps "$ram") $(val read_mbps "$ram")"
}

declare -a bw br rw rr sbw sbr srw srr hw hr hc
for ((i = 0; i < RUNS; i++)); do
    read -r a b c d < <(vm_run)
    bw+=("$a"); br+=("$b"); rw+=("$c"); rr+=("$d")
    read -r a b c d < <(vm_run -object memory-backend-shm,id=ram,size=$((MIB * 2 + 64))M -machine memory-backend=ram)
    sbw+=("$a"); sbr+=("$b"); srw+=("$c"); srr+=("$d")
    host=$("$HOSTBW" "$MIB")
    hw+=("$(val write_mbps "$host")"); hr+=("$(val read_mbps "$host")"); hc+=("$(val memcpy_mbps "$host")")
    echo "run $((i + 1)) (write/read MB/s): bar2 ${bw[-1]}/${br[-1]} ram ${rw[-1]}/${rr[-1]} |" \
        "bar2 ${sbw[-1]}/${sbr[-1]} shm-ram ${srw[-1]}/${srr[-1]} | host ${hw[-1]}/${hr[-1]} memcpy ${hc[-1]}"
done
m() { median "$@"; }
# Ratios are taken per run (the two numbers of a ratio measured seconds
# apart), then the median over runs: the machine's load varies between runs.
ratios() { local -n _a=$1 _b=$2; local k; for k in "${!_a[@]}"; do awk -v a="${_a[$k]}" -v b="${_b[$k]}" 'BEGIN {printf "%d\n", 1000 * a / b}'; done; }
mr() { median $(ratios "$1" "$2") | awk '{printf "%.2f", $1 / 1000}'; }
row() { # label, write array, read array, ref write, ref read
    echo "| $1 | $(m $(eval echo "\${$2[@]}")) | $(m $(eval echo "\${$3[@]}")) | $(mr "$2" "$4") | $(mr "$3" "$5") | $(mr "$2" hw) | $(mr "$3" hr) |"
}
echo
echo "ivshmem bandwidth, ${MIB} MiB, $RUNS runs: medians of MB/s (10^6 bytes/s) and of per-run ratios."
echo "VM exits caused by BAR2 in every run: 0"
echo
echo "| guest RAM backend: what | write MB/s | read MB/s | write / guest RAM | read / guest RAM | write / host | read / host |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
row "ram (default): BAR2 (memory-backend-shm)" bw br rw rr
row "ram (default): guest RAM" rw rr rw rr
row "shm: BAR2 (memory-backend-shm)" sbw sbr srw srr
row "shm: guest RAM" srw srr srw srr
row "host: same loops" hw hr hw hr
echo "| host: memcpy (copy rate) | $(m "${hc[@]}") | | | | | |"
