#!/bin/busybox sh
# /init of the Linux smoke test: report what the test asserts on the serial
# console as "basalt-test:" lines, then power off through ACPI.
bb=/bin/busybox
$bb mount -t proc proc /proc
$bb mount -t sysfs sys /sys
$bb mount -t devtmpfs dev /dev
$bb echo "basalt-test: userspace up"
$bb echo "basalt-test: cpus $($bb grep -c ^processor /proc/cpuinfo)"
$bb echo "basalt-test: online $($bb cat /sys/devices/system/cpu/online)"
$bb echo "basalt-test: rtc $($bb cat /sys/class/rtc/rtc0/date)"
$bb echo "basalt-test: clock $($bb date -u +%F)"
# Linux on AMD takes the TSC as its clocksource once it has refined the TSC's
# frequency against the PM timer, about a second after boot; on Intel CPUID
# gives the frequency and it does so at once.
clocksource=/sys/devices/system/clocksource/clocksource0/current_clocksource
for i in 1 2 3 4 5; do
    [ "$($bb cat $clocksource)" = tsc ] && break
    $bb sleep 1
done
$bb echo "basalt-test: clocksource $($bb cat $clocksource)"

# virtio: the modules Debian builds them as, in dependency order.
m=/lib/modules/$($bb uname -r)/kernel
for module in drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_mmio \
    drivers/block/virtio_blk drivers/char/virtio_console lib/crc16 crypto/crc32c_generic fs/mbcache fs/jbd2/jbd2 fs/ext4/ext4; do
    $bb insmod $m/$module.ko || $bb echo "basalt-test: insmod $module failed"
done
for i in 1 2 3 4 5 6 7 8 9 10; do
    [ -b /dev/vda ] && [ -c /dev/hvc0 ] && break
    $bb sleep 1
done
$bb echo "basalt-test: hvc $(test -c /dev/hvc0 && echo present || echo missing)"
# ttyS0 is interrupt-driven, so its last lines may still be on their way when
# hvc0's line goes out at once: let them go first, so the log keeps the
# script's order (on two vCPUs under QEMU's TCG they did not always).
$bb sleep 1
$bb echo "basalt-test: hello through virtio-console" > /dev/hvc0
$bb echo "basalt-test: disk $($bb cat /sys/block/vda/size) sectors"
$bb mke2fs -q /dev/vda && $bb echo "basalt-test: mke2fs ok"
$bb mount -t ext2 /dev/vda /mnt && $bb echo "basalt-test: mounted"
$bb echo "written by basalt guest" > /mnt/proof
$bb umount /mnt && $bb echo 3 > /proc/sys/vm/drop_caches
$bb mount -t ext2 /dev/vda /mnt && $bb echo "basalt-test: read back: $($bb cat /mnt/proof)"
$bb umount /mnt
$bb cat /proc/interrupts
$bb echo "basalt-test: powering off"
$bb poweroff -f
