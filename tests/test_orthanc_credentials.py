"""The Orthanc hook refuses an Orthanc open to other hosts with empty credentials (issue 17).

Orthanc 1.10 with ``"RegisteredUsers": {"${ORTHANC_USER}": "${ORTHANC_PASSWORD}"}`` and
both variables unset registers an empty user, and with ``RemoteAccessAllowed`` true it
answers ``Authorization: Basic Og==`` from anywhere: an open PACS. The hook logs one ERROR
and delivers nothing to it; a properly configured Orthanc, and Debian's default (loopback
only, authentication off), get the MPPS state.

Orthanc has no bind-address option: with remote access allowed it would answer the whole
network, so each test runs Orthanc, the server and its clients in a network namespace of
their own (only ``lo``), entered by one thread of this process (Linux, root).
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from pydicom.uid import CTImageStorage

from conftest import wait_for
from dicom_clients import dicom_mpps
from orthanc_server import PASSWORD, USER, Orthanc, new_uids
from worklist_mpps.delivery.orthanc import OPEN_ORTHANC
from worklist_mpps.delivery.orthanc_access import open_to_anyone

CLONE_NEWNET = 0x40000000
REFUSAL = "accepts empty credentials from other hosts"


def _enter_new_netns() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)


@pytest.fixture
def netns() -> Iterator[Callable[..., Any]]:
    """run(fn, *args): fn called in a thread inside a fresh network namespace; processes
    it starts live there too (they inherit the thread's namespace)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: a network namespace keeps an open Orthanc off the network")
    pool = ThreadPoolExecutor(1, initializer=_enter_new_netns)
    try:
        pool.submit(lambda: None).result(timeout=20)
    except Exception as exc:  # noqa: BLE001 - a machine without namespaces: skip, say why
        pool.shutdown()
        pytest.skip(f"no network namespace here: {exc}")
    yield lambda fn, *args, **kwargs: pool.submit(fn, *args, **kwargs).result(timeout=120)
    pool.shutdown()


def orthanc_with(tmp_path, port: int = 0, **config: Any) -> Orthanc:
    """The tests' Orthanc with these top-level keys changed (None: removed)."""
    server = Orthanc(tmp_path)
    settings = json.loads(server.config_path.read_text())
    if port:  # the same Orthanc again (same storage), configured anew
        server.port, server.url, settings["HttpPort"] = port, f"http://127.0.0.1:{port}", port
    for key, value in config.items():
        if value is None:
            settings.pop(key, None)
        else:
            settings[key] = value
    server.config_path.write_text(json.dumps(settings, indent=2))
    return server


OPEN = {  # the configuration, its variables unset (names no test sets)
    "RemoteAccessAllowed": True,
    "AuthenticationEnabled": True,
    "RegisteredUsers": {"${WM_UNSET_ORTHANC_USER}": "${WM_UNSET_ORTHANC_PASSWORD}"},
}
OPEN_AUTH_OFF = {"RemoteAccessAllowed": True, "AuthenticationEnabled": False}
PROPER = {"RemoteAccessAllowed": True, "AuthenticationEnabled": True}  # user wmtest
DEBIAN_DEFAULT = {  # /etc/orthanc/orthanc.json: loopback only, authentication off
    "RemoteAccessAllowed": False,
    "AuthenticationEnabled": None,
    "RegisteredUsers": None,
}


def start_hook(live_server, orthanc: Orthanc, tmp_path, *credentials: str, env=None):
    return live_server(
        f"sqlite:///{tmp_path / 'hook.db'}",
        "--load-sample-data",
        "false",
        "--orthanc-url",
        orthanc.url,
        *credentials,
        "--orthanc-changes-interval",
        "0.5",
        "--outbox-retry-min",
        "0.3",
        "--outbox-retry-max",
        "1",
        env=env,
    )


def mpps_cycle(port: int, study: str, series: str, image: str) -> str:
    """N-CREATE then N-SET COMPLETED of an MPPS of ``study`` with the project's dicom-mpps."""
    url = f"pacs://WORKLISTS@127.0.0.1:{port}"
    uid = dicom_mpps("create", url, "--aet", "CT01", "--study-uid", study, "--modality", "CT")
    dicom_mpps(
        "update", url, "--aet", "CT01", "--mpps-uid", uid, "--status", "COMPLETED",
        "--series-uid", series, "--image-uid", image, "--sop-class-uid", CTImageStorage,
    )  # fmt: skip
    return uid


def outbox(tmp_path) -> list[dict]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "worklist_mpps",
            "outbox",
            "list",
            "--json",
            "--database-url",
            f"sqlite:///{tmp_path / 'hook.db'}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return [r for r in json.loads(proc.stdout) if r["target"] == "orthanc"]


def hook_and_mpps(netns, live_server, orthanc, tmp_path, credentials: bool):
    """An image of a new study in Orthanc, a hook server for it with its own credentials
    (none: unset, like Orthanc's; or the test user), and an MPPS cycle on that study:
    (the hook, the Study Instance UID, the MPPS SOP Instance UID)."""
    study, series, image = new_uids(3)
    netns(orthanc.upload, study, series, image)
    args = ("--orthanc-username", USER) if credentials else ()
    env = {"WORKLIST_MPPS_ORTHANC_PASSWORD": PASSWORD} if credentials else None
    hook = netns(start_hook, live_server, orthanc, tmp_path, *args, env=env)
    return hook, study, netns(mpps_cycle, hook.port, study, series, image)


@pytest.mark.parametrize(
    "config, credentials",
    [
        pytest.param(OPEN, False, id="empty-user-variables-unset"),
        pytest.param(OPEN_AUTH_OFF, True, id="authentication-off"),
    ],
)
def test_an_open_orthanc_is_refused_once_and_gets_nothing(
    netns, live_server, tmp_path, config, credentials
):
    orthanc = orthanc_with(tmp_path, **config)
    if config is OPEN:
        orthanc.http.auth = ("", "")  # the only credentials it knows
    netns(orthanc.start)
    try:
        hook, study, uid = hook_and_mpps(netns, live_server, orthanc, tmp_path, credentials)
        # the IN PROGRESS row may be tried before the COMPLETED one supersedes it (the
        # outbox keeps Orthanc's newest state only); the live row keeps waiting
        rows = wait_for(
            lambda: [
                r for r in outbox(tmp_path) if r["attempts"] >= 3 and r["state"] != "superseded"
            ],
            30,
        )
        assert {(r["mpps_uid"], r["state"], r["last_error"]) for r in rows} == {
            (uid, "pending", OPEN_ORTHANC)
        }
        assert not {k for k in netns(orthanc.metadata, study) if k.startswith("Mpps")}
        refusals = [line for line in hook.log().splitlines() if REFUSAL in line]
        assert len(refusals) == 1, refusals  # outbox and witness: one line
        assert " ERROR " in refusals[0] and "docs/deploy-debian.md" in refusals[0]

        # fixed (remote access off, as Debian ships it): the waiting notification arrives
        netns(orthanc.stop)
        orthanc = netns(orthanc_with(tmp_path, orthanc.port, **DEBIAN_DEFAULT).start)
        meta = wait_for(lambda: netns(orthanc.metadata, study).get("MppsCompleteness"), 30)
        assert meta == "complete"
        assert "no longer accepts empty credentials" in hook.log()
    finally:
        netns(orthanc.stop)


@pytest.mark.parametrize(
    "config, credentials",
    [
        pytest.param(PROPER, True, id="remote-access-with-a-user"),
        pytest.param(DEBIAN_DEFAULT, False, id="debian-default-loopback-no-auth"),
    ],
)
def test_a_closed_orthanc_gets_the_mpps_state(netns, live_server, tmp_path, config, credentials):
    orthanc = orthanc_with(tmp_path, **config)
    netns(orthanc.start)
    try:
        hook, study, uid = hook_and_mpps(netns, live_server, orthanc, tmp_path, credentials)
        meta = wait_for(
            lambda: (
                (m := netns(orthanc.metadata, study)).get("MppsCompleteness") == "complete" and m
            ),
            30,
        )
        assert (meta["MppsStatus"], meta["MppsInstanceUID"]) == ("COMPLETED", uid)
        assert REFUSAL not in hook.log()
        assert PASSWORD not in hook.log()
    finally:
        netns(orthanc.stop)


def test_the_probe_sees_an_open_orthanc_whatever_127_0_0_1_gets(netns, tmp_path):
    """What the refusal rests on (delivery/orthanc_access.py), against Orthanc 1.10: every
    configuration below answers 127.0.0.1 without a password or with the test user, but
    only the open ones answer empty credentials from 127.0.0.2."""
    cases = ((OPEN, True), (OPEN_AUTH_OFF, True), (PROPER, False), (DEBIAN_DEFAULT, False))
    for number, (config, expected) in enumerate(cases):
        workdir = tmp_path / str(number)
        workdir.mkdir()
        orthanc = orthanc_with(workdir, **config)
        if config is OPEN:
            orthanc.http.auth = ("", "")
        netns(orthanc.start)
        try:
            assert netns(open_to_anyone, orthanc.url) is expected, config
        finally:
            netns(orthanc.stop)
