#!/bin/busybox sh
# /init of the Linux smoke test: report what the test asserts on the serial
# console as "basalt-test:" lines, then power off through ACPI.
bb=/bin/busybox
$bb mount -t proc proc /proc
$bb mount -t sysfs sys /sys
$bb mount -t devtmpfs dev /dev
$bb echo "basalt-test: userspace up"
$bb echo "basalt-test: cpus $($bb grep -c ^processor /proc/cpuinfo)"
$bb echo "basalt-test: rtc $($bb cat /sys/class/rtc/rtc0/date)"
$bb echo "basalt-test: clock $($bb date -u +%F)"
$bb echo "basalt-test: clocksource $($bb cat /sys/devices/system/clocksource/clocksource0/current_clocksource)"
$bb echo "basalt-test: timer interrupts $($bb grep -c LOC /proc/interrupts)"
$bb echo "basalt-test: powering off"
$bb poweroff -f
