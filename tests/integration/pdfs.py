"""Small PDFs written byte by byte for the tests: a text layer, a scanned page (an image and
no text), and a bomb (a content stream that inflates past the extractor's memory cap)."""

import zlib


def _pdf(objects):
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def _stream(data, extra=b""):
    return b"<< /Length %d %s>>\nstream\n" % (len(data), extra) + data + b"\nendstream"


def _page(resources, contents):
    return [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources " + resources
        + b" /Contents 4 0 R >>",
        contents,
    ]


def text_pdf(lines):
    escape = lambda s: s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")  # noqa: E731
    shown = b" ".join(b"(%s) Tj T*" % escape(line).encode("latin-1") for line in lines)
    content = b"BT /F1 12 Tf 14 TL 72 720 Td " + shown + b" ET"
    font = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
    return _pdf(_page(b"<< /Font << /F1 5 0 R >> >>", _stream(content)) + [font])


def scanned_pdf():
    pixels = bytes((x * 31 + y * 17) % 256 for y in range(32) for x in range(32))
    image = _stream(pixels, b"/Type /XObject /Subtype /Image /Width 32 /Height 32 "
                            b"/ColorSpace /DeviceGray /BitsPerComponent 8 ")
    content = _stream(b"q 400 0 0 400 100 300 cm /Im1 Do Q")
    return _pdf(_page(b"<< /XObject << /Im1 5 0 R >> >>", content) + [image])


def bomb_pdf(inflated_bytes=3 << 29):
    """A page whose content stream is `inflated_bytes` of spaces, deflated to about a
    thousandth of that: 1.5 GiB by default, past the extractor's 1 GiB address space."""
    z = zlib.compressobj(9)
    block = b" " * (1 << 20)
    packed = b"".join(z.compress(block) for _ in range(inflated_bytes >> 20)) + z.flush()
    return _pdf(_page(b"<< >>", _stream(packed, b"/Filter /FlateDecode ")))
