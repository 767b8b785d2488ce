#!/usr/bin/env bash
# worklist-mpps on a plain Debian 12 / Ubuntu host, beside Debian's orthanc package
# (docs/deploy-debian.md). As root; idempotent (a re-run upgrades the software and keeps
# the configuration, the password and the database):
#   - a virtualenv /opt/worklist-mpps (PYTHON, default Debian's /usr/bin/python3 with
#     python3-venv), filled from requirements.lock with every file checked against its
#     hash: from PyPI, or with WHEELHOUSE=DIR from a folder scripts/build-wheelhouse.sh
#     made (no package index: air-gapped sites);
#   - a system user worklist-mpps (no login shell, no home of its own);
#   - /etc/worklist-mpps/config.yaml (kept when present) and orthanc-password (a
#     generated password, 0640 root:worklist-mpps; a systemd credential of the unit);
#   - /var/lib/worklist-mpps (the SQLite database; the user's, 0750);
#   - /etc/systemd/system/worklist-mpps.service (hardened; not enabled: see the end);
#   - in /etc/orthanc/ (when Orthanc is installed): worklist-mpps.json with the keys no
#     file there defines, and our entries in the UserMetadata, RegisteredUsers and
#     DicomModalities a Debian file already defines (backed up first), so that Orthanc
#     merges the folder without a key defined twice (deploy/debian/orthanc_config.py).
# DESTDIR=/some/root installs into that staging root instead (packagers, the test):
# the user is created there with useradd --root when DESTDIR/etc/passwd exists, and the
# virtualenv's scripts are rewritten to run from /opt/worklist-mpps.
#   usage: [DESTDIR=DIR] [WHEELHOUSE=DIR] [PYTHON=python3.11] scripts/install-system.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$(pwd)
DESTDIR=${DESTDIR:-}
DESTDIR=${DESTDIR%/}
PYTHON=${PYTHON:-/usr/bin/python3}
WHEELHOUSE=${WHEELHOUSE:-}
SERVICE_USER=worklist-mpps
PREFIX=/opt/worklist-mpps
ETC=/etc/worklist-mpps
STATE=/var/lib/worklist-mpps
UNIT=/etc/systemd/system/worklist-mpps.service
ORTHANC_ETC=/etc/orthanc
export PIP_DISABLE_PIP_VERSION_CHECK=1

say() { echo "install-system: $*"; }
die() {
    echo "install-system: $*" >&2
    exit 1
}

[ "$(id -u)" = 0 ] || die "run as root (sudo make install-system)"
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null ||
    die "$PYTHON: Python 3.11 or newer is needed (PYTHON=... to choose another)"
"$PYTHON" -c 'import ensurepip, venv' 2>/dev/null ||
    die "$PYTHON has no venv module: apt install python3-venv"
if [ -n "$WHEELHOUSE" ]; then
    WHEELHOUSE=$(cd "$WHEELHOUSE" && pwd)
    [ -f "$WHEELHOUSE/requirements.lock" ] && ls "$WHEELHOUSE"/worklist_mpps-*.whl >/dev/null 2>&1 ||
        die "WHEELHOUSE=$WHEELHOUSE: no requirements.lock or worklist_mpps wheel (scripts/build-wheelhouse.sh)"
fi

# --- the virtualenv ----------------------------------------------------------------------
venv=$DESTDIR$PREFIX
if ! "$venv/bin/python" -c '' 2>/dev/null; then # none yet, or its interpreter is gone
    "$PYTHON" -m venv --clear "$venv"
    say "created the virtualenv $PREFIX ($("$venv/bin/python" -V))"
fi
pip=("$venv/bin/python" -m pip install --quiet)
if [ -n "$WHEELHOUSE" ]; then
    "${pip[@]}" --no-index --find-links "$WHEELHOUSE" --require-hashes -r "$WHEELHOUSE/requirements.lock"
    "${pip[@]}" --no-index --no-deps --force-reinstall "$WHEELHOUSE"/worklist_mpps-*.whl
    say "installed from the wheelhouse $WHEELHOUSE (no package index)"
else
    "${pip[@]}" --require-hashes -r "$SRC/requirements.lock"
    "${pip[@]}" --no-deps --no-build-isolation --force-reinstall "$SRC"
    say "installed from PyPI (requirements.lock, hashes checked) and $SRC"
fi
if [ -n "$DESTDIR" ]; then # scripts and pyvenv.cfg name the final paths, not the staging ones
    grep -rlI --null -F "$venv" "$venv/bin" "$venv/pyvenv.cfg" | xargs -0r sed -i "s#$venv#$PREFIX#g"
fi
version=$("$venv/bin/python" -c 'from importlib.metadata import version; print(version("worklist-mpps"))')
say "worklist-mpps $version in $PREFIX"
mkdir -p "$venv/share/docs" "$venv/share/debian"
install -m 0644 "$SRC/docs/deploy-debian.md" "$venv/share/docs/deploy-debian.md"
install -m 0644 "$SRC"/deploy/debian/{config.yaml,orthanc-fragment.json,orthanc_config.py,worklist-mpps.service} \
    "$venv/share/debian/"

# --- the system user ---------------------------------------------------------------------
account() { # name passwd|group field: an entry's field in the target root
    if [ -z "$DESTDIR" ]; then
        getent "$2" "$1" | cut -d: -f"$3" || true
    else
        awk -F: -v n="$1" -v f="$3" '$1 == n { print $f; exit }' "$DESTDIR/etc/$2" 2>/dev/null || true
    fi
}
if [ -z "$DESTDIR" ] || [ -f "$DESTDIR/etc/passwd" ]; then
    root=()
    [ -z "$DESTDIR" ] || root=(--root "$DESTDIR")
    if [ -z "$(account "$SERVICE_USER" group 1)" ]; then
        groupadd "${root[@]}" --system "$SERVICE_USER"
        say "created the system group $SERVICE_USER"
    fi
    if [ -z "$(account "$SERVICE_USER" passwd 1)" ]; then
        useradd "${root[@]}" --system --gid "$SERVICE_USER" --home-dir "$STATE" --no-create-home \
            --shell /usr/sbin/nologin --comment "worklist-mpps server" "$SERVICE_USER"
        say "created the system user $SERVICE_USER (no login shell)"
    fi
    uid=$(account "$SERVICE_USER" passwd 3)
    gid=$(account "$SERVICE_USER" group 3)
else
    say "no $DESTDIR/etc/passwd: user $SERVICE_USER not created (a package's postinst does it); files stay root's"
    uid=0 gid=0
fi

# --- configuration, password, state ----------------------------------------------------
install -d -m 0750 -o 0 -g "$gid" "$DESTDIR$ETC"
if [ ! -e "$DESTDIR$ETC/config.yaml" ]; then
    install -m 0640 -o 0 -g "$gid" "$SRC/deploy/debian/config.yaml" "$DESTDIR$ETC/config.yaml"
    say "wrote $ETC/config.yaml"
else
    say "kept $ETC/config.yaml"
fi
password=$DESTDIR$ETC/orthanc-password
if [ ! -s "$password" ]; then
    (umask 077 && "$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(24))' >"$password")
    say "generated the Orthanc password of user $SERVICE_USER in $ETC/orthanc-password"
fi
chown 0:"$gid" "$password"
chmod 0640 "$password"
install -d -m 0750 -o "$uid" -g "$gid" "$DESTDIR$STATE"

# --- the systemd unit --------------------------------------------------------------------
install -d -m 0755 "$DESTDIR$(dirname "$UNIT")"
install -m 0644 "$SRC/deploy/debian/worklist-mpps.service" "$DESTDIR$UNIT"
say "installed $UNIT"
if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
fi

# --- Debian's Orthanc --------------------------------------------------------------------
if [ -d "$DESTDIR$ORTHANC_ETC" ]; then
    say "Orthanc configuration $ORTHANC_ETC:"
    "$PYTHON" "$SRC/deploy/debian/orthanc_config.py" "$DESTDIR$ORTHANC_ETC" \
        "$SRC/deploy/debian/orthanc-fragment.json" "$SERVICE_USER" "$password"
    orthanc_gid=$(account orthanc group 3)
    chown 0:"${orthanc_gid:-0}" "$DESTDIR$ORTHANC_ETC/worklist-mpps.json"
    chmod 0640 "$DESTDIR$ORTHANC_ETC/worklist-mpps.json"
else
    say "no $ORTHANC_ETC: install Debian's Orthanc (apt install orthanc), then run this again"
fi

cat <<EOF
install-system: done. Next steps (docs/deploy-debian.md):
  1. review $ETC/config.yaml (DICOM port; bind and devices to serve modalities on the network; Orthanc URL)
  2. systemctl restart orthanc          # reads the user and the metadata just added
  3. systemctl enable --now worklist-mpps
  4. echoscu -v -aec WORKLISTS 127.0.0.1 5243; journalctl -u worklist-mpps -f
EOF
