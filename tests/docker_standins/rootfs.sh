#!/usr/bin/env bash
# The stand-ins' root file system: Debian bookworm minbase with python3, python3-venv
# (the worklist-mpps image's base) and Debian's orthanc package (the Orthanc stand-in),
# as a tarball for `docker import`. build.sh caches it under a hash of this file.
#   usage: rootfs.sh OUT.tar.gz [MIRROR]
set -euo pipefail
out=$1
mirror=${2:-http://deb.debian.org/debian}
suite=bookworm
# debootstrap's resolver does not follow virtual packages: orthanc's
# libboost-regex1.74.0-icu72 is provided by libboost-regex1.74.0, named here
packages=python3,python3-venv,orthanc,libboost-regex1.74.0
cache=$(dirname "$out")
# debootstrap mounts /proc and /sys inside the target: unmounted before anything is removed,
# and rm never crosses into another file system
# (a run killed half-way leaves its folder: removed by the next one; build.sh holds a lock)
cleanup() {
    for dir in "$@"; do
        findmnt -rn -o TARGET | awk -v d="$dir/" 'index($0, d) == 1' | sort -r | xargs -r umount -l
        rm -rf --one-file-system "$dir"
    done
}
cleanup "$cache"/debootstrap.*
work=$(mktemp -d "$cache/debootstrap.XXXXXX")
trap 'cleanup "$work"' EXIT
echo "debootstrap $suite ($packages) from $mirror: a few minutes, once" >&2
debootstrap --variant=minbase --include="$packages" "$suite" "$work/root" "$mirror" \
    > "$work/debootstrap.log" 2>&1 || {
    tail -n 20 "$work/debootstrap.log" "$work/root/debootstrap/debootstrap.log" >&2 || true
    exit 1
}
# no package caches or lists in the image; Debian's own Orthanc configuration files go
# (orthancteam/orthanc reads only what is put in /etc/orthanc)
rm -rf "$work"/root/var/cache/apt/archives/*.deb "$work"/root/var/lib/apt/lists/*
rm -f "$work"/root/etc/orthanc/*.json
tar -C "$work/root" --numeric-owner -czf "$out.part" .
mv "$out.part" "$out"
