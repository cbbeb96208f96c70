#!/bin/busybox sh
# /init of the scheduler's overcommit case: a VM with more vCPUs than the
# host has cores. Linux must bring every vCPU online, and one CPU-bound loop
# per vCPU must run to its end (each vCPU gets time on a shared core), then
# it powers off through ACPI.
bb=/bin/busybox
$bb mount -t proc proc /proc
$bb mount -t sysfs sys /sys
$bb mount -t devtmpfs dev /dev
$bb echo "basalt-test: userspace up"
$bb echo "basalt-test: cpus $($bb grep -c ^processor /proc/cpuinfo)"
$bb echo "basalt-test: online $($bb cat /sys/devices/system/cpu/online)"
# Each loop is a process of its own, so Linux spreads them over its vCPUs;
# each leaves a file saying where it ended, read once all are done (the
# parent's console lines stay in order).
for n in 0 1 2 3; do
    $bb sh -c "i=0; while [ \$i -lt 20000 ]; do i=\$((i + 1)); done; $bb echo \"loop $n done on cpu \$($bb cut -d' ' -f39 /proc/self/stat)\" > /loop$n" &
done
wait
for n in 0 1 2 3; do
    $bb echo "basalt-test: $($bb cat /loop$n 2>&1)"
done
$bb echo "basalt-test: all loops done"
$bb echo "basalt-test: powering off"
$bb poweroff -f
