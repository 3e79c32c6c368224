#!/usr/bin/env python3
"""An SMP/MCUmgr device on a real pseudo-terminal, built on PyPI `smp` (independent of wardgate's
Rust codec): console framing with `smp.packet`, requests parsed and responses built with the
`smp` models (FIRMWARE.md §4.3, PROTOCOLS §A).

It keeps MCUboot-like slot state: slot 0 the running image, slot 1 what was uploaded; a slot's
hash is sha256(header + body + protected TLVs) as MCUboot's SHA256 TLV. Test (state write,
confirm false) marks slot 1 pending; a reset swaps it in unconfirmed; a reset while the running
image is unconfirmed reverts; confirm makes it permanent.

Fault switches (command-line flags) reproduce FIRMWARE.md §2 and FAILURES.md B23-B25; every
event is a line in --log (`erase`, `session new|resume`, `drop`, `late`, `reset`, `boot`, ...).
SIGUSR1 power-cycles the device (a reset without a command).

--pace-baud models a full-duplex UART: what the gateway writes is received at the line rate
(requests queued in the device's buffers wait their turn), and replies go out at the line rate
from a writer thread while the next request is being received, as on a real serial line. MCUmgr
parameters report --buf-size and --buf-count; slot info (image group command 6) reports slots of
--slot-size bytes (--no-slot-info: not supported), and an upload longer than the slot is refused
with INVALID_IMAGE_TOO_LARGE as Zephyr does.
"""

import argparse
import base64
import hashlib
import os
import queue
import select
import signal
import struct
import sys
import threading
import time
import tty

import cbor2
from smp import error as smperr
from smp import header as H
from smp import image_management as img
from smp import os_management as osm
from smp import packet

RSP = {H.OP.READ: H.OP.READ_RSP, H.OP.WRITE: H.OP.WRITE_RSP}


def mcuboot(data):
    """(version text, slot hash) of an MCUboot image; None when it is not one."""
    if len(data) < 32:
        return None
    magic, _load, hdr, prot, size = struct.unpack_from("<IIHHI", data, 0)
    if magic != 0x96F3B83D or hdr + size + prot > len(data):
        return None
    maj, mnr, rev, build = struct.unpack_from("<BBHI", data, 20)
    version = f"{maj}.{mnr}.{rev}" + (f".{build}" if build else "")
    return version, hashlib.sha256(data[: hdr + size + prot]).digest()


class Device:
    def __init__(self, a):
        self.a = a
        self.log_file = open(a.log, "a", buffering=1) if a.log else None
        self.slot0 = {"version": a.running_version, "hash": hashlib.sha256(b"factory " + a.running_version.encode()).digest(), "confirmed": True}
        self.slot1 = None  # {"version", "hash", "pending", "permanent"}
        self.session = None  # {"sha", "len", "off", "data"}
        self.dropped = set()
        self.late_done = set()
        self.reset_done = False
        self.uploads = 0
        self.strip_crc_next = False
        self.no_crc_done = False
        self.ahead = 0
        if a.pending_stuck:
            self.slot1 = {"version": "9.9.9", "hash": b"\x99" * 32, "pending": True, "permanent": False}
        if a.stale_session:
            data = open(a.stale_session, "rb").read()
            # After "upload to 50 %, then erase" on a device with zephyr#51798: the data is gone,
            # the session's offset is not.
            self.session = {"sha": hashlib.sha256(data).digest(), "len": len(data), "off": len(data) // 2, "data": bytearray(b"\xff" * len(data))}
        self.master = self.slave = None
        self.rx_clock = 0.0
        self.tx_clock = 0.0
        self.out = queue.Queue()
        threading.Thread(target=self.writer, daemon=True).start()
        self.open_pty()

    def log(self, text):
        if self.log_file:
            self.log_file.write(f"{time.monotonic():.3f} {text}\n")

    def open_pty(self):
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        tty.setraw(self.master)
        tmp = self.a.link + ".tmp"
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(os.ttyname(self.slave), tmp)
        os.replace(tmp, self.a.link)
        self.log("pty " + os.ttyname(self.slave))

    def close_pty(self):
        if os.path.lexists(self.a.link):
            os.unlink(self.a.link)
        os.close(self.master)
        os.close(self.slave)
        self.master = None

    def line_time(self, n):
        return n * 10 / self.a.pace_baud if self.a.pace_baud else 0.0

    def received(self, n):
        """Waits until `n` bytes just read have crossed the line (8N1), after those before."""
        now = time.monotonic()
        self.rx_clock = max(self.rx_clock, now) + self.line_time(n)
        if self.rx_clock > now:
            time.sleep(self.rx_clock - now)

    def writer(self):
        """The transmit side: each queued write leaves after its line time, independently of
        what is being received."""
        while True:
            data = self.out.get()
            try:
                now = time.monotonic()
                self.tx_clock = max(self.tx_clock, now) + self.line_time(len(data))
                if self.tx_clock > now:
                    time.sleep(self.tx_clock - now)
                view = memoryview(data)
                while view and self.master is not None:
                    n = os.write(self.master, view)
                    view = view[n:]
            except OSError as e:
                self.log(f"write failed: {e!r}")
            finally:
                self.out.task_done()

    def write(self, data):
        self.out.put(bytes(data))

    def flush(self):
        """Waits until everything queued has been written."""
        self.out.join()

    def send(self, frame):
        if self.a.noise:
            self.write(b"[00:00:%02d.123,456] <inf> app: sensor tick\r\n" % (self.uploads % 60))
        if self.strip_crc_next:
            # zephyr#37893 (B23): the packet framed without its CRC (the length still counts it).
            self.strip_crc_next = False
            text = base64.b64encode(struct.pack(">H", len(frame) + 2) + frame)
            out = b"".join((b"\x06\x09" if i == 0 else b"\x04\x14") + text[i:i + 120] + b"\n" for i in range(0, len(text), 120))
        else:
            out = b"".join(packet.encode(frame))
        self.write(out)

    def error(self, hdr, group, rc, v1=False):
        """An error answer: v1 `{rc}` with --v1-errors or `v1` (a non-group error, such as
        ENOTSUP for a command the device lacks, is `{rc}` under v2 too), else v2 `{err}`."""
        v1 = v1 or self.a.v1_errors
        body = {"rc": rc} if v1 else {"err": {"group": group, "rc": rc}}
        data = cbor2.dumps(body)
        h = H.Header(op=RSP[hdr.op], version=hdr.version, flags=H.Flag(0), length=len(data), group_id=hdr.group_id, sequence=hdr.sequence, command_id=hdr.command_id)
        if hdr.group_id == 1:
            cls = img.ImageManagementErrorV1 if v1 else img.ImageManagementErrorV2
        else:
            cls = osm.OSManagementErrorV1 if v1 else osm.OSManagementErrorV2
        if v1:
            return bytes(cls(header=h, rc=rc))
        err = smperr.Err[img.IMG_MGMT_ERR if hdr.group_id == 1 else osm.OS_MGMT_RET_RC](group=group, rc=rc)
        return bytes(cls(header=h, err=err))

    def images(self):
        out = [img.ImageState(slot=0, version=self.slot0["version"], hash=self.slot0["hash"], active=True, bootable=True, confirmed=self.slot0["confirmed"])]
        if self.slot1:
            s = self.slot1
            out.append(img.ImageState(slot=1, version=s["version"], hash=s["hash"], bootable=True, pending=s["pending"], permanent=s["permanent"]))
        return out

    def slot_info(self, frame):
        """Slot info (image group command 6), which smp 4.2.0 does not know (its header check
        refuses the command id): header and CBOR by hand (PROTOCOLS §A.1, §A.2)."""
        b0, _flags, _length, _group, seq, _cmd = struct.unpack(">BBHHBB", frame[:8])
        version, op = (b0 >> 3) & 0x3, b0 & 0x7
        if self.a.no_slot_info:
            body = {"rc": 8}  # MGMT_ERR_ENOTSUP, the non-group shape
        else:
            self.log(f"slot-info size={self.a.slot_size}")
            size = self.a.slot_size
            body = {"images": [{"image": 0, "slots": [{"slot": 0, "size": size}, {"slot": 1, "size": size, "upload_image_id": 0}], "max_image_size": self.max_image()}]}
        payload = cbor2.dumps(body)
        rsp_op = 1 if op == 0 else 3  # READ_RSP / WRITE_RSP
        return struct.pack(">BBHHBB", (version << 3) | rsp_op, 0, len(payload), 1, seq, 6) + payload

    def handle(self, frame):
        """The reply bytes to one request frame, or None for no reply."""
        if len(frame) >= 8 and struct.unpack(">HB", frame[4:6] + frame[7:8]) == (1, 6):
            return self.slot_info(frame)
        hdr = H.Header.loads(frame[:8])
        v, seq = hdr.version, hdr.sequence
        g, c = hdr.group_id, hdr.command_id
        if g == 0 and c == 0:
            req = osm.EchoWriteRequest.loads(frame)
            return bytes(osm.EchoWriteResponse(r=req.d, sequence=seq, version=v))
        if g == 0 and c == 6:
            if self.a.no_params:
                return self.error(hdr, 0, 8, v1=True)  # MGMT_ERR_ENOTSUP
            return bytes(osm.MCUMgrParametersReadResponse(buf_size=self.a.buf_size, buf_count=self.a.buf_count, sequence=seq, version=v))
        if g == 0 and c == 5:
            self.pending_reset = True
            return bytes(osm.ResetWriteResponse(sequence=seq, version=v))
        if g == 1 and c == 0 and hdr.op == H.OP.READ:
            return bytes(img.ImageStatesReadResponse(images=self.images(), sequence=seq, version=v))
        if g == 1 and c == 0:
            req = img.ImageStatesWriteRequest.loads(frame)
            if req.confirm and (req.hash is None or req.hash == self.slot0["hash"]):
                self.slot0["confirmed"] = True
                self.log(f"confirm {self.slot0['version']}")
            elif self.slot1 and req.hash == self.slot1["hash"]:
                self.slot1["pending"] = True
                self.slot1["permanent"] = bool(req.confirm)
                self.log(f"{'permanent' if req.confirm else 'test'} {self.slot1['version']}")
            else:
                return self.error(hdr, 1, 8 if not self.a.v1_errors else 3)  # HASH_NOT_FOUND / EINVAL
            # smp 4.2.0's ImageStatesWriteResponse derives from the read response (op READ_RSP);
            # Zephyr answers a write with WRITE_RSP: build the header ourselves.
            payload = bytes(img.ImageStatesReadResponse(images=self.images(), sequence=seq, version=v))[8:]
            h = H.Header(op=H.OP.WRITE_RSP, version=v, flags=H.Flag(0), length=len(payload), group_id=1, sequence=seq, command_id=0)
            return bytes(h) + payload
        if g == 1 and c == 5:
            if self.slot1 and self.slot1["pending"]:
                self.log("erase refused: slot 1 pending")
                return self.error(hdr, 1, 6 if self.a.v1_errors else 28)
            self.slot1 = None
            self.log("erase (command)")
            if self.session and not self.a.stale_offset_after_erase:
                self.session = None
            elif self.session:
                self.session["data"] = bytearray(b"\xff" * self.session["len"])
            return bytes(img.ImageEraseResponse(sequence=seq, version=v))
        if g == 1 and c == 1:
            return self.upload(hdr, img.ImageUploadWriteRequest.loads(frame))
        return self.error(hdr, g, 8, v1=True)  # MGMT_ERR_ENOTSUP

    def max_image(self):
        """The largest image the slot takes: its size less MCUboot's trailer (one 4 KiB sector
        here)."""
        return self.a.slot_size - 4096

    def upload(self, hdr, req):
        v, seq = hdr.version, hdr.sequence
        self.uploads += 1
        self.log(f"upload off={req.off} len={len(req.data)} seq={seq}")
        if self.ahead:
            self.log(f"pipelined ahead={self.ahead}")
        if self.a.drop_at is not None and req.off >= self.a.drop_at and not self.dropped:
            self.dropped.add(req.off)
            self.log(f"drop off={req.off} seq={seq}")
            return None
        if req.off == 0:
            if req.len is None:
                return self.error(hdr, 1, 3 if self.a.v1_errors else 21)
            s = self.session
            if s and req.sha is not None and s["sha"] == req.sha and s["len"] == req.len and s["off"] > 0:
                self.log(f"session resume off={s['off']}")
                return bytes(img.ImageUploadWriteResponse(off=s["off"], sequence=seq, version=v))
            if self.slot1 and self.slot1["pending"]:
                self.log("upload refused: slot 1 pending")
                return self.error(hdr, 1, 6 if self.a.v1_errors else 28)
            if req.len > self.max_image():
                self.log(f"upload refused: len={req.len} too large")
                return self.error(hdr, 1, 3 if self.a.v1_errors else 30)  # EINVAL / INVALID_IMAGE_TOO_LARGE
            self.log(f"session new len={req.len} sha={'yes' if req.sha else 'no'}")
            self.log(f"erase delay={self.a.erase_delay}")
            time.sleep(self.a.erase_delay)
            self.slot1 = None
            self.session = {"sha": req.sha, "len": req.len, "off": 0, "data": bytearray(b"\xff" * req.len)}
        s = self.session
        if s is None:
            return bytes(img.ImageUploadWriteResponse(off=0, sequence=seq, version=v))
        if req.off == s["off"] and req.off + len(req.data) <= s["len"]:
            s["data"][req.off:req.off + len(req.data)] = req.data
            s["off"] += len(req.data)
        if self.a.reset_offset_at is not None and not self.reset_done and req.off >= self.a.reset_offset_at:
            self.reset_done = True
            self.session = None
            self.log(f"offset reset to 0 at off={req.off}")
            return bytes(img.ImageUploadWriteResponse(off=0, sequence=seq, version=v))
        if self.a.no_crc_at is not None and req.off >= self.a.no_crc_at and not self.no_crc_done:
            self.no_crc_done = True
            self.strip_crc_next = True
            self.log(f"no-crc off={req.off} seq={seq}")
        if self.a.late_at is not None and req.off >= self.a.late_at and "x" not in self.late_done:
            self.late_done.add("x")
            self.log(f"late off={req.off} seq={seq} by={self.a.late_by}")
            time.sleep(self.a.late_by)
        match = None
        if s["off"] == s["len"]:
            data = bytes(s["data"])
            match = s["sha"] is None or hashlib.sha256(data).digest() == s["sha"]
            info = mcuboot(data)
            self.log(f"complete match={match}")
            if info:
                self.slot1 = {"version": info[0], "hash": info[1], "pending": False, "permanent": False}
            self.session = None if match else s
        return bytes(img.ImageUploadWriteResponse(off=s["off"], match=match, sequence=seq, version=v))

    def boot(self):
        """MCUboot at reset: a pending slot 1 is swapped in (test: unconfirmed); an unconfirmed
        running image is reverted."""
        if not self.slot0["confirmed"] and self.slot1:
            self.slot0, self.slot1 = {"version": self.slot1["version"], "hash": self.slot1["hash"], "confirmed": True}, {"version": self.slot0["version"], "hash": self.slot0["hash"], "pending": False, "permanent": False}
            self.log(f"boot revert to {self.slot0['version']}")
        elif self.slot1 and self.slot1["pending"] and not self.a.pending_stuck:
            new = {"version": self.slot1["version"], "hash": self.slot1["hash"], "confirmed": self.slot1["permanent"]}
            self.slot1 = {"version": self.slot0["version"], "hash": self.slot0["hash"], "pending": False, "permanent": False}
            self.slot0 = new
            self.log(f"boot swap to {new['version']} confirmed={new['confirmed']}")
            if self.a.boot_fails and not new["confirmed"]:
                self.log("boot failed: watchdog reset")
                self.boot()
        else:
            self.log(f"boot {self.slot0['version']}")

    def reset(self):
        self.log("reset")
        self.session = None
        self.flush()
        self.close_pty()
        time.sleep(self.a.swap_delay)
        self.boot()
        self.open_pty()

    def run(self):
        buf = b""
        decoder = None
        self.pending_reset = False
        self.power_cycle = False
        signal.signal(signal.SIGUSR1, lambda *_: setattr(self, "power_cycle", True))
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while True:
            if self.power_cycle:
                self.power_cycle = False
                buf, decoder = b"", None
                self.reset()
            try:
                r, _, _ = select.select([self.master], [], [], 0.2)
            except InterruptedError:
                continue
            if not r:
                continue
            try:
                chunk = os.read(self.master, 4096)
            except OSError:
                time.sleep(0.05)
                continue
            self.received(len(chunk))
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                line += b"\n"
                if line.startswith(b"\x06\x09"):
                    decoder = packet.decode()
                    next(decoder)
                elif not line.startswith(b"\x04\x14") or decoder is None:
                    continue
                try:
                    decoder.send(line)
                except StopIteration as done:
                    decoder = None
                    # Bytes of further requests already received: the gateway did not wait
                    # for this answer before sending more (pipelining).
                    self.ahead = len(buf)
                    reply = self.handle(done.value)
                    if reply is not None:
                        self.send(reply)
                    if self.pending_reset:
                        self.pending_reset = False
                        time.sleep(0.05)
                        buf = b""
                        self.reset()
                except Exception as e:  # a bad packet: dropped without an answer, as Zephyr does
                    self.log(f"bad packet: {e!r}")
                    decoder = None


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--link", required=True, help="symlink to create for the pty")
    p.add_argument("--log", help="event log file")
    p.add_argument("--running-version", default="1.0.0")
    p.add_argument("--buf-size", type=int, default=512)
    p.add_argument("--buf-count", type=int, default=4)
    p.add_argument("--erase-delay", type=float, default=0.0, help="seconds before answering a new upload session (slot erase)")
    p.add_argument("--drop-at", type=int, help="no reply to the first upload request at or past this offset")
    p.add_argument("--no-crc-at", type=int, help="send the answer to the first upload request at or past this offset without its CRC (B23)")
    p.add_argument("--late-at", type=int, help="reply late (--late-by) to the first upload request at or past this offset")
    p.add_argument("--late-by", type=float, default=3.0)
    p.add_argument("--stale-offset-after-erase", action="store_true", help="zephyr#51798: erase keeps the upload offset")
    p.add_argument("--stale-session", help="start as after '50 %% of IMAGE uploaded, then erased' with zephyr#51798")
    p.add_argument("--reset-offset-at", type=int, help="forget the session and answer off 0 at this offset, once")
    p.add_argument("--no-params", action="store_true", help="MCUmgr parameters not supported")
    p.add_argument("--noise", action="store_true", help="console log lines before every reply")
    p.add_argument("--v1-errors", action="store_true", help="errors as v1 {rc} instead of v2 {err}")
    p.add_argument("--swap-delay", type=float, default=0.5, help="seconds the port is gone at a reset")
    p.add_argument("--boot-fails", action="store_true", help="a test image never boots: MCUboot reverts")
    p.add_argument("--pending-stuck", action="store_true", help="slot 1 holds a pending image that cannot be erased")
    p.add_argument("--pace-baud", type=int, help="pace reads and writes to this line rate, full duplex (the pty has none)")
    p.add_argument("--slot-size", type=lambda x: int(x, 0), default=0x100000, help="bytes of each slot (slot info; uploads longer than the slot less a 4 KiB trailer are refused)")
    p.add_argument("--no-slot-info", action="store_true", help="slot info (image group command 6) not supported")
    a = p.parse_args()
    Device(a).run()


if __name__ == "__main__":
    main()
