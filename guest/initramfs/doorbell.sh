# The guest side of the labs' doorbell scenario, sourced by the x86 lab's
# L2 init (guest/initramfs/init) and the arm64 lab's (tests/lab/arm64/l2-init)
# with busybox's applets and ivshmem-tool on PATH and $doorbell = N peers:
# doorbell_token loads ivshmem_db, learns this peer's id from the server
# (ivshmem-tool peers), marks itself ready at 0x1000 + 8 * id in the region,
# waits for all N, then passes a token 0 -> 1 -> ... -> 0 by interrupts
# (ivshmem-tool ring / wait-irq). It sets db_id and, on failure, db_why (the
# step that failed).
db_id=- db_why=
doorbell_token() {
    insmod /lib/modules/ivshmem_db.ko || { db_why=insmod; return 1; }
    info=$(ivshmem-tool peers 2>&1) || { echo "$info"; db_why=peers; return 1; }
    echo "$info"
    db_id=$(echo "$info" | sed -n 's/.* id=\([0-9]*\) .*/\1/p')
    [ -n "$db_id" ] || { db_id=-; db_why=no-id; return 1; }
    ready=hex:2142445944414552
    ivshmem-tool write $((0x1000 + 8 * db_id)) $ready >/dev/null || { db_why=ready-mark; return 1; }
    p=0
    while [ $p -lt "$doorbell" ]; do
        ivshmem-tool wait $((0x1000 + 8 * p)) $ready --timeout-ms 200000 >/dev/null ||
            { db_why=peer-$p-never-ready; return 1; }
        p=$((p + 1))
    done
    next=$(((db_id + 1) % doorbell))
    if [ "$db_id" = 0 ]; then
        ivshmem-tool ring $next 0 || { db_why=ring; return 1; }
        ivshmem-tool wait-irq 0 --timeout-ms 120000 || { db_why=token-lost; return 1; }
    else
        ivshmem-tool wait-irq 0 --timeout-ms 200000 || { db_why=no-token; return 1; }
        ivshmem-tool ring $next 0 || { db_why=ring; return 1; }
    fi
}
