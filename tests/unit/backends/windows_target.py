"""The target the Windows backend tests patch: one x64 module with a hotpatchable function, in a fake process."""

from __future__ import annotations

MODULE_BASE = 0x1_8000_0000
ENTRY = 0x1020  # RVA of a hotpatchable function: 5+ bytes of CC before it
PID = 4242


def module_image() -> bytearray:
    """0x4000 bytes of image: 32 bytes of CC padding before ENTRY, then an 8-byte first instruction."""
    image = bytearray(0x4000)
    image[0x1000:ENTRY] = b"\xcc" * 0x20
    image[ENTRY : ENTRY + 8] = bytes.fromhex("488da42400000000")  # lea rsp, [rsp+0]: 8-byte first instruction
    return image
