#!/usr/bin/env bash
# Local stand-ins for the two registry images of docker-compose.yml, built from Debian
# packages only (for machines that cannot pull from Docker Hub; tests/test_deploy_docker.py):
#   worklist-mpps-standin/base     Debian bookworm minbase + python3 + python3-venv + orthanc
#                                  (the Dockerfile's BASE_IMAGE instead of python:3.11-slim)
#   worklist-mpps-standin/orthanc  that base + an entrypoint and a healthcheck probe that
#                                  behave like orthancteam/orthanc's (orthanc/ folder here)
# The debootstrap root file system (rootfs.sh) is cached as a tarball in $CACHE, keyed by
# a hash of rootfs.sh (package list included): later runs skip debootstrap. The images stay in
# the engine's image store as a cache, tagged with that key; older tags are removed.
#   usage: tests/docker_standins/build.sh      (prints BASE_IMAGE=... and ORTHANC_IMAGE=...)
#   env:   DOCKER (docker command), CACHE (/var/cache/worklist-mpps-tests),
#          MIRROR (http://deb.debian.org/debian)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
docker=${DOCKER:-docker}
cache=${CACHE:-/var/cache/worklist-mpps-tests}
mirror=${MIRROR:-http://deb.debian.org/debian}

key=$(sha256sum < "$here/rootfs.sh" | cut -c1-12)
orthanc_key=$(cat "$here/rootfs.sh" "$here"/orthanc/* | sha256sum | cut -c1-12)
base_image=worklist-mpps-standin/base:$key
orthanc_image=worklist-mpps-standin/orthanc:$orthanc_key
rootfs=$cache/rootfs-$key.tar.gz
mkdir -p "$cache"
# one build at a time per cache
exec 9> "$cache/lock"
flock -w 1800 9

if [ ! -s "$rootfs" ]; then
    "$here/rootfs.sh" "$rootfs" "$mirror"
fi
# older rootfs tarballs of this cache are stale
find "$cache" -maxdepth 1 -name "rootfs-*.tar.gz" ! -path "$rootfs" -delete

if ! "$docker" image inspect "$base_image" > /dev/null 2>&1; then
    "$docker" import --change 'CMD ["/bin/bash"]' "$rootfs" "$base_image" > /dev/null
fi
if ! "$docker" image inspect "$orthanc_image" > /dev/null 2>&1; then
    "$docker" build --quiet --network none --build-arg BASE_IMAGE="$base_image" \
        -t "$orthanc_image" "$here/orthanc" > /dev/null
fi
# only the current tags stay cached
for stale in $("$docker" image ls --format '{{.Repository}}:{{.Tag}}' 'worklist-mpps-standin/*'); do
    case $stale in "$base_image" | "$orthanc_image") ;; *) "$docker" rmi "$stale" > /dev/null ;; esac
done
echo "BASE_IMAGE=$base_image"
echo "ORTHANC_IMAGE=$orthanc_image"
