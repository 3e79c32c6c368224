#!/usr/bin/env python3
"""Independent SMP clients against wardgate's Rust device model (`wardgate_sim::smp_device`):
PyPI `smpclient` (asyncio; serial, and BLE through bleak → BlueZ D-Bus) and PyPI
`mcumgr-toolkit` (pyo3 binding of the Rust crate; its own serial framing, retries and chunking).
Neither shares code with wardgate's codec or the model.

Each step prints one JSON line `{"step": ..., ...}` on stdout; a failing step prints
`{"step": ..., "error": "..."}` and the script goes on when the caller said so (`--keep-going`)
or stops with exit 1. The Rust test (`tests/tests/smp_model_peers.rs`) reads the lines and
checks them against the model's own state.

  smp_peers.py smpclient-serial --port PTY --image IMG [--first-timeout 10] [--timeout 2]
  smp_peers.py smpclient-resume --port PTY --image IMG
  smp_peers.py smpclient-ble --address AA:BB:.. --image IMG
  smp_peers.py toolkit-serial --port PTY --image IMG
  smp_peers.py toolkit-ble --address AA:BB:.. --image IMG
"""

import argparse
import asyncio
import hashlib
import json
import sys
import time


def out(step, **kw):
    kw["step"] = step
    print(json.dumps(kw, default=lambda b: b.hex() if isinstance(b, (bytes, bytearray)) else str(b)), flush=True)


def slots_of(images):
    return [
        {
            "slot": i.slot,
            "version": i.version,
            "hash": (i.hash or b"").hex(),
            "active": bool(i.active),
            "confirmed": bool(i.confirmed),
            "pending": bool(i.pending),
            "permanent": bool(i.permanent),
        }
        for i in images
    ]


# --- smpclient -------------------------------------------------------------------------------

async def sc_connect(transport, address, timeout):
    from smpclient import SMPClient
    client = SMPClient(transport, address)
    await client.connect(timeout)
    return client


async def sc_request(client, req, timeout):
    from smpclient.generics import error, success
    rsp = await client.request(req, timeout_s=timeout)
    if error(rsp):
        return None, rsp
    assert success(rsp), rsp
    return rsp, None


async def sc_basics(client, timeout):
    from smpclient.requests import image_management as img
    from smpclient.requests import os_management as osm
    rsp, err = await sc_request(client, osm.EchoWrite(d="wardgate model"), timeout)
    out("echo", r=rsp.r if rsp else None, error=str(err) if err else None)
    rsp, err = await sc_request(client, osm.MCUMgrParametersRead(), timeout)
    out("params", buf_size=rsp.buf_size if rsp else None, buf_count=rsp.buf_count if rsp else None, error=str(err) if err else None)
    rsp, err = await sc_request(client, img.ImageStatesRead(), timeout)
    out("list", slots=slots_of(rsp.images))


async def sc_upload(client, data, first_timeout, timeout, tag):
    offsets = []
    t0 = time.monotonic()
    try:
        async for off in client.upload(data, first_timeout_s=first_timeout, subsequent_timeout_s=timeout):
            offsets.append(off)
        out(tag, offsets=offsets[:3] + offsets[-2:], n=len(offsets), first=offsets[0] if offsets else None,
            last=offsets[-1] if offsets else None, seconds=round(time.monotonic() - t0, 3), bytes=len(data))
        return True
    except Exception as e:  # noqa: BLE001 - the step reports any failure
        out(tag, error=f"{type(e).__name__}: {str(e)[:160]}", offsets=offsets[-3:], first=offsets[0] if offsets else None,
            last=offsets[-1] if offsets else None)
        return False


async def sc_update_rest(client_factory, client, hash_, timeout, swap_wait):
    """test → reset → reconnect → list → confirm → list."""
    from smpclient.requests import image_management as img
    from smpclient.requests import os_management as osm
    rsp, err = await sc_request(client, img.ImageStatesWrite(hash=hash_, confirm=False), timeout)
    out("test", slots=slots_of(rsp.images) if rsp else None, error=str(err) if err else None)
    rsp, err = await sc_request(client, osm.ResetWrite(), timeout)
    out("reset", error=str(err) if err else None)
    try:
        await client.disconnect()
    except Exception:  # noqa: BLE001
        pass
    deadline = time.monotonic() + swap_wait
    client = None
    while time.monotonic() < deadline:
        await asyncio.sleep(0.3)
        try:
            client = await client_factory()
            rsp, _ = await sc_request(client, osm.EchoWrite(d="back"), 1.0)
            if rsp:
                break
        except Exception:  # noqa: BLE001 - still swapping
            if client:
                try:
                    await client.disconnect()
                except Exception:  # noqa: BLE001
                    pass
            client = None
    if client is None:
        out("back", error="the device did not answer after the reset")
        return
    out("back")
    rsp, _ = await sc_request(client, img.ImageStatesRead(), timeout)
    out("list-after-reset", slots=slots_of(rsp.images))
    rsp, err = await sc_request(client, img.ImageStatesWrite(confirm=True), timeout)
    out("confirm", slots=slots_of(rsp.images) if rsp else None, error=str(err) if err else None)
    await client.disconnect()


def image_hash(path):
    """The image's SHA256 TLV as smpclient's own MCUboot reader sees it (independent of wardgate)."""
    from smpclient.mcuboot import IMAGE_TLV, ImageInfo
    return ImageInfo.load_file(path).get_tlv(IMAGE_TLV.SHA256).value


async def smpclient_serial(a):
    from smpclient.transport.serial import SMPSerialTransport
    data = open(a.image, "rb").read()
    out("image", hash=image_hash(a.image), sha=hashlib.sha256(data).digest(), bytes=len(data))
    factory = lambda: sc_connect(SMPSerialTransport(), a.port, 5)  # noqa: E731
    client = await factory()
    await sc_basics(client, a.timeout)
    ok = await sc_upload(client, data, a.first_timeout, a.timeout, "upload")
    if not ok:
        return
    from smpclient.requests import image_management as img
    rsp, _ = await sc_request(client, img.ImageStatesRead(), a.timeout)
    out("list-after-upload", slots=slots_of(rsp.images))
    await sc_update_rest(factory, client, image_hash(a.image), a.timeout, a.swap_wait)


async def smpclient_resume(a):
    """Two upload() calls: the first stops at the dropped reply (smpclient does not retry), the
    second resumes at the device's offset."""
    from smpclient.transport.serial import SMPSerialTransport
    data = open(a.image, "rb").read()
    client = await sc_connect(SMPSerialTransport(), a.port, 5)
    await sc_upload(client, data, a.first_timeout, a.timeout, "upload-try1")
    await client.disconnect()
    client = await sc_connect(SMPSerialTransport(), a.port, 5)
    await sc_upload(client, data, a.first_timeout, a.timeout, "upload-try2")
    from smpclient.requests import image_management as img
    rsp, _ = await sc_request(client, img.ImageStatesRead(), a.timeout)
    out("list-after-upload", slots=slots_of(rsp.images))
    await client.disconnect()


async def smpclient_ble(a):
    from smpclient.transport.ble import SMPBLETransport
    data = open(a.image, "rb").read()
    out("image", hash=image_hash(a.image), bytes=len(data))

    async def factory():
        return await sc_connect(SMPBLETransport(), a.address, 15)

    client = await factory()
    out("mtu", mtu=client._transport.mtu if hasattr(client._transport, "mtu") else None,
        max_write=getattr(client._transport, "_max_write_without_response_size", None))
    await sc_basics(client, a.timeout)
    ok = await sc_upload(client, data, a.first_timeout, a.timeout, "upload")
    if not ok:
        return
    from smpclient.requests import image_management as img
    rsp, _ = await sc_request(client, img.ImageStatesRead(), a.timeout)
    out("list-after-upload", slots=slots_of(rsp.images))
    await sc_update_rest(factory, client, image_hash(a.image), a.timeout, a.swap_wait)


# --- mcumgr-toolkit --------------------------------------------------------------------------

def toolkit(a):
    from mcumgr_toolkit import MCUmgrClient
    data = open(a.image, "rb").read()

    def connect():
        if a.address:
            c = MCUmgrClient.ble(a.address, int(a.timeout * 1000))
        else:
            c = MCUmgrClient.serial(a.port, 115200, int(a.timeout * 1000))
        c.set_retries(3)
        return c

    out("image", hash=image_hash(a.image), bytes=len(data))
    c = connect()
    out("echo", r=c.os_echo("wardgate model"))
    p = c.os_mcumgr_parameters()
    out("params", buf_size=p.buf_size, buf_count=p.buf_count)
    c.use_auto_frame_size()
    out("list", slots=slots_of(c.image_get_state()))
    c.set_timeout_ms(int(a.first_timeout * 1000))
    progress = []
    t0 = time.monotonic()
    try:
        c.image_upload(data, progress=lambda done, total: progress.append(done))
        out("upload", n=len(progress), last=progress[-1] if progress else None, bytes=len(data),
            seconds=round(time.monotonic() - t0, 3))
    except Exception as e:  # noqa: BLE001
        out("upload", error=f"{type(e).__name__}: {e}", last=progress[-1] if progress else None)
        return
    c.set_timeout_ms(int(a.timeout * 1000))
    out("list-after-upload", slots=slots_of(c.image_get_state()))
    h = image_hash(a.image)
    out("test", slots=slots_of(c.image_set_state(h, False)))
    c.os_system_reset()
    out("reset")
    del c
    deadline = time.monotonic() + a.swap_wait
    c = None
    while time.monotonic() < deadline:
        time.sleep(0.3)
        try:
            c = connect()
            c.set_timeout_ms(1000)
            c.set_retries(0)
            c.os_echo("back")
            break
        except Exception:  # noqa: BLE001 - still swapping
            c = None
    if c is None:
        out("back", error="the device did not answer after the reset")
        return
    out("back")
    c.set_timeout_ms(int(a.timeout * 1000))
    out("list-after-reset", slots=slots_of(c.image_get_state()))
    out("confirm", slots=slots_of(c.image_set_state(None, True)))
    # An erase of the slot holding the previous image, then an error by name: a test of a hash
    # the device does not have.
    try:
        c.image_set_state(bytes(32), False)
        out("bad-test", error=None)
    except Exception as e:  # noqa: BLE001
        out("bad-test", error=str(e))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("command", choices=["smpclient-serial", "smpclient-resume", "smpclient-ble", "toolkit-serial", "toolkit-ble"])
    p.add_argument("--port")
    p.add_argument("--address")
    p.add_argument("--image", required=True)
    p.add_argument("--first-timeout", type=float, default=10.0)
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("--swap-wait", type=float, default=20.0)
    a = p.parse_args()
    try:
        if a.command in ("toolkit-serial", "toolkit-ble"):
            toolkit(a)
        else:
            asyncio.run({"smpclient-serial": smpclient_serial, "smpclient-resume": smpclient_resume,
                         "smpclient-ble": smpclient_ble}[a.command](a))
    except Exception as e:  # noqa: BLE001
        out("fatal", error=f"{type(e).__name__}: {str(e)[:400]}")
        sys.exit(1)


if __name__ == "__main__":
    main()
