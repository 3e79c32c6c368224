#!/usr/bin/env python3
"""Independent decryptor of wardgate's encrypted messages (docs/wire-format.md "Encryption").

Written against RFC 9052 §5 and RFC 9053 §4.1, §5, §6.4 only, sharing no code with wardgate:
`cbor2` decodes CBOR, `cryptography` does ECDH P-256, HKDF-SHA-256, AES key unwrap
(RFC 3394) and AES-256-GCM.

A message is CBOR tag 96 (COSE_Encrypt) around
  [protected: bstr {1: 3 (A256GCM)}, unprotected: {5 (IV): bstr .size 12},
   ciphertext: bstr, recipients: [1*8 recipient]]
recipient = [protected: bstr {1: -31 (ECDH-ES + A256KW)},
             unprotected: {4 (kid): SHA-256 of the receiver SPKI, -1: ephemeral COSE_Key EC2},
             ciphertext: the wrapped content key, 40 bytes]
The key-encryption key is HKDF-SHA-256(salt absent, ECDH secret, info = COSE_KDF_Context
[-5 (A256KW), [nil, nil, nil], [nil, nil, nil], [256, recipient protected bstr]]); the content
AAD is Enc_structure ["Encrypt", protected, h''].

Used by verify_cose.py (--key): decrypt, then verify the COSE_Sign1 inside.
Usage alone: decrypt_cose.py --key receiver.key IN OUT  (writes the signed message to OUT)
"""

import hashlib
import sys
from collections.abc import Mapping

import cbor2
from cryptography.hazmat.primitives import hashes, keywrap, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

COSE_ENCRYPT_TAG = 96
ALG_A256GCM = 3
ALG_A256KW = -5
ALG_ECDH_ES_A256KW = -31
HDR_ALG = 1
HDR_KID = 4
HDR_IV = 5
HDR_EPHEMERAL_KEY = -1
MAX_RECIPIENTS = 8


class Undecryptable(Exception):
    pass


def load_receiver_key(path):
    """(private key, kid) of a receiver's PEM P-256 private key; kid = SHA-256 of its SPKI."""
    with open(path, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise Undecryptable(f"{path}: not a P-256 private key")
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, hashlib.sha256(spki).digest()


def is_encrypted(raw):
    return raw[:2] == b"\xd8\x60"


def _header(bstr):
    h = cbor2.loads(bstr) if bstr else {}
    if not isinstance(h, Mapping):
        raise Undecryptable("protected header is not a map")
    return h


def decrypt(raw, key, kid):
    """The plaintext (the signed COSE_Sign1) of a COSE_Encrypt; raises Undecryptable."""
    try:
        msg = cbor2.loads(raw)
    except Exception as e:  # noqa: BLE001
        raise Undecryptable(f"not CBOR: {e}")
    if not isinstance(msg, cbor2.CBORTag) or msg.tag != COSE_ENCRYPT_TAG:
        raise Undecryptable("not a tagged COSE_Encrypt (CBOR tag 96)")
    body = msg.value
    if not isinstance(body, (list, tuple)) or len(body) != 4:
        raise Undecryptable("COSE_Encrypt is not a 4-element array")
    protected_bstr, unprotected, ciphertext, recipients = body
    if _header(protected_bstr).get(HDR_ALG) != ALG_A256GCM:
        raise Undecryptable("content algorithm is not A256GCM (3)")
    iv = unprotected.get(HDR_IV)
    if not isinstance(iv, bytes) or len(iv) != 12:
        raise Undecryptable("IV is not a 12-byte bstr")
    if not isinstance(recipients, (list, tuple)) or not 1 <= len(recipients) <= MAX_RECIPIENTS:
        raise Undecryptable(f"recipients: 1 to {MAX_RECIPIENTS} expected")
    mine = [r for r in recipients if len(r) == 3 and r[1].get(HDR_KID) == kid]
    if not mine:
        raise Undecryptable(f"no recipient with kid {kid.hex()}: not encrypted to this key")
    r_protected_bstr, r_unprotected, wrapped = mine[0]
    if _header(r_protected_bstr).get(HDR_ALG) != ALG_ECDH_ES_A256KW:
        raise Undecryptable("recipient algorithm is not ECDH-ES + A256KW (-31)")
    epk = r_unprotected.get(HDR_EPHEMERAL_KEY)
    if not isinstance(epk, Mapping) or epk.get(1) != 2 or epk.get(-1) != 1:
        raise Undecryptable("ephemeral key is not an EC2 P-256 COSE_Key")
    x, y = epk.get(-2), epk.get(-3)
    if not isinstance(x, bytes) or not isinstance(y, bytes) or len(x) != 32 or len(y) != 32:
        raise Undecryptable("ephemeral key x/y are not 32-byte bstr")
    try:
        peer = ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
        ).public_key()
    except ValueError as e:
        raise Undecryptable(f"ephemeral key is not on P-256: {e}")
    shared = key.exchange(ec.ECDH(), peer)
    context = cbor2.dumps(
        [ALG_A256KW, [None, None, None], [None, None, None], [256, r_protected_bstr]]
    )
    kek = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=context).derive(shared)
    try:
        cek = keywrap.aes_key_unwrap(kek, wrapped)
    except Exception as e:  # noqa: BLE001 - InvalidUnwrap and length errors
        raise Undecryptable(f"key unwrap failed: {e!r}")
    aad = cbor2.dumps(["Encrypt", protected_bstr, b""])
    try:
        return AESGCM(cek).decrypt(iv, ciphertext, aad)
    except Exception as e:  # noqa: BLE001 - InvalidTag
        raise Undecryptable(f"ciphertext or tag does not authenticate: {e!r}")


def main(argv):
    if len(argv) != 4 or argv[0] != "--key":
        print(__doc__, file=sys.stderr)
        return 2
    key, kid = load_receiver_key(argv[1])
    with open(argv[2], "rb") as f:
        raw = f.read()
    try:
        plain = decrypt(raw, key, kid)
    except Undecryptable as e:
        print(f"{argv[2]}: {e}", file=sys.stderr)
        return 1
    with open(argv[3], "wb") as f:
        f.write(plain)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
