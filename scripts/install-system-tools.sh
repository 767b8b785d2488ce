#!/usr/bin/env bash
# Installs the real peers the tests talk to, from Debian's packages, when missing:
# DCMTK (findscu, echoscu, wlmscpfs), Orthanc with its Python plugin (orthanc-python:
# worklist-mpps inside Orthanc), the Docker engine with docker-compose and debootstrap
# (the compose deployment's end-to-end test builds its base images from Debian's
# packages) and Chromium (the operator page's browser tests, driven by
# Playwright through executable_path: Playwright's own browser download is not used). Needs root for apt-get; without
# root it says what is missing and the tests that need it skip with that reason.
set -euo pipefail

missing=()
command -v findscu >/dev/null 2>&1 || missing+=(dcmtk)
command -v Orthanc >/dev/null 2>&1 || missing+=(orthanc)
[ -e /usr/share/orthanc/plugins/libOrthancPython.so ] || missing+=(orthanc-python)
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
[ -x /usr/bin/chromium ] || missing+=(chromium)
# a Japanese font, so that screenshots show 山田^太郎 (the page itself uses the viewer's fonts)
[ -e /usr/share/fonts/opentype/ipafont-gothic/ipag.ttf ] || missing+=(fonts-ipafont-gothic)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-system-tools: missing ${missing[*]} (needs root and apt-get); dependent tests will skip" >&2
    exit 0
fi
echo "install-system-tools: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# policy-rc.d keeps the orthanc package from starting a system service of its own
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d.wm && chmod +x /usr/sbin/policy-rc.d.wm
had_policy=0; [ -e /usr/sbin/policy-rc.d ] && had_policy=1
[ $had_policy -eq 1 ] || cp /usr/sbin/policy-rc.d.wm /usr/sbin/policy-rc.d
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
[ $had_policy -eq 1 ] || rm -f /usr/sbin/policy-rc.d
rm -f /usr/sbin/policy-rc.d.wm
