#!/bin/busybox sh
# /init of the default VM of `cargo xtask run`: Debian's kernel with busybox,
# the virtio drivers loaded, and a shell on the serial console. The virtio
# disk is /dev/vda (blank); the virtio console is /dev/hvc0.
bb=/bin/busybox
$bb mount -t proc proc /proc
$bb mount -t sysfs sys /sys
$bb mount -t devtmpfs dev /dev
$bb --install -s /bin
export PATH=/bin
m=/lib/modules/$(uname -r)/kernel
for module in drivers/virtio/virtio_ring drivers/virtio/virtio drivers/virtio/virtio_mmio \
    drivers/block/virtio_blk drivers/char/virtio_console lib/crc16 crypto/crc32c_generic fs/mbcache fs/jbd2/jbd2 fs/ext4/ext4 \
    drivers/input/evdev drivers/acpi/button; do
    insmod $m/$module.ko 2>/dev/null || echo "init: could not load $module"
done
# The ACPI power button (Basalt's `shutdown NAME` presses it) powers the VM
# off, as a distribution's acpid or logind would: its input device's first
# event ends the watch.
power_button() {
    for event in /sys/class/input/event*; do
        [ "$(cat $event/device/name 2>/dev/null)" = "Power Button" ] && echo /dev/input/${event##*/} && return
    done
}
(
    for i in 1 2 3 4 5; do
        button=$(power_button)
        [ -n "$button" ] && break
        sleep 1
    done
    if [ -n "$button" ] && head -c 1 "$button" >/dev/null; then
        echo "init: power button pressed; powering off"
        sync
        poweroff -f
    fi
) &
echo
echo "Basalt default VM: Debian Linux $(uname -r), $(grep -c ^processor /proc/cpuinfo) vCPU(s), busybox shell."
echo "A blank virtio disk is /dev/vda (try: mke2fs /dev/vda && mount /dev/vda /mnt). 'poweroff -f' stops the VM,"
echo "as does its ACPI power button (Basalt's shell: Ctrl-] then 'shutdown linux')."
while true; do
    setsid cttyhack sh -l
    echo "init: the shell ended; 'poweroff -f' stops the VM"
done
