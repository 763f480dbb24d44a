"""Generated uploads for the upload tests: one file per case of the upload table, and what it must give.

``CASES`` covers DICOM (modality LUT, VOI window, MONOCHROME1, multi-frame, compressed transfer
syntaxes, files without a preamble or pixels), 8 and 16-bit PNG and TIFF, RGBA, LA, palette, CMYK,
EXIF orientation, animation, wrong extensions, and files that must be rejected. The DICOM files
carry the patient name ``PATIENT_NAME`` and id ``PATIENT_ID``, which must never reach a message,
a notice or a log.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import (
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID-0042"


# Generated files ---------------------------------------------------------------------------


def _encode(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def _dicom_dataset(pixels: np.ndarray | None, photometric: str = "MONOCHROME2", bits_stored: int = 12) -> Dataset:
    dataset = Dataset()
    dataset.PatientName = PATIENT_NAME
    dataset.PatientID = PATIENT_ID
    dataset.PatientBirthDate = "19700101"
    dataset.Modality = "MR"
    dataset.SOPClassUID = MRImageStorage
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    if pixels is not None:
        dataset.set_pixel_data(pixels, photometric, bits_stored)
    return dataset


def _dicom_bytes(dataset: Dataset, *, preamble: bool = True) -> bytes:
    buffer = io.BytesIO()
    if preamble:
        dataset.save_as(buffer, enforce_file_format=True)
    else:
        # An ACR-NEMA style stream: no preamble, no file meta, implicit VR little endian.
        dataset.file_meta = FileMetaDataset()
        dataset.save_as(buffer, implicit_vr=True, little_endian=True, enforce_file_format=False)
    return buffer.getvalue()


GRADIENT_12_BIT = (np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) * 30)  # 0 .. 3570


def dicom_monochrome1() -> bytes:
    return _dicom_bytes(_dicom_dataset(GRADIENT_12_BIT, "MONOCHROME1"))


def dicom_monochrome2_window() -> bytes:
    dataset = _dicom_dataset(GRADIENT_12_BIT)
    # Stored 0, 30, 60, ... become -100, -40, 20, ... after the rescale.
    dataset.RescaleSlope = 2
    dataset.RescaleIntercept = -100
    dataset.WindowCenter = 500
    dataset.WindowWidth = 401
    return _dicom_bytes(dataset)


def dicom_invalid_window() -> bytes:
    dataset = _dicom_dataset(GRADIENT_12_BIT)
    dataset.WindowCenter = 500
    dataset.WindowWidth = 0  # LINEAR windows need a width of at least 1
    return _dicom_bytes(dataset)


def dicom_ct() -> bytes:
    dataset = _dicom_dataset(GRADIENT_12_BIT)
    dataset.Modality = "CT"
    return _dicom_bytes(dataset)


def dicom_multi_frame() -> bytes:
    # Frame k has one bright pixel at (k, k), which identifies the decoded frame.
    frames = np.zeros((5, 8, 8), np.uint16)
    for index in range(5):
        frames[index, index, index] = 1000
    return _dicom_bytes(_dicom_dataset(frames, bits_stored=16))


def dicom_enhanced_multi_frame() -> bytes:
    # Each frame is flat at 100, 200 or 300 with one black pixel, and carries its own window
    # centered on that value in the per-frame functional groups, so the middle frame maps to mid-gray.
    frames = np.stack([np.full((4, 4), value, np.uint16) for value in (100, 200, 300)])
    frames[:, 0, 0] = 0
    dataset = _dicom_dataset(frames)
    per_frame = []
    for center in (100, 200, 300):
        window = Dataset()
        window.WindowCenter = center
        window.WindowWidth = 100
        group = Dataset()
        group.FrameVOILUTSequence = [window]
        per_frame.append(group)
    dataset.PerFrameFunctionalGroupsSequence = per_frame
    return _dicom_bytes(dataset)


def dicom_rle() -> bytes:
    dataset = _dicom_dataset(GRADIENT_12_BIT)
    dataset.compress(RLELossless)
    return _dicom_bytes(dataset)


JPEG_SOURCE = Image.fromarray((np.arange(32 * 32).reshape(32, 32) % 256).astype(np.uint8), mode="L")


def dicom_jpeg_baseline() -> bytes:
    dataset = _dicom_dataset(np.asarray(JPEG_SOURCE), bits_stored=8)
    dataset.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    dataset.PixelData = encapsulate([_encode(JPEG_SOURCE, "JPEG", quality=95)])
    dataset["PixelData"].VR = "OB"
    return _dicom_bytes(dataset)


def dicom_jpeg_ls() -> bytes:
    dataset = _dicom_dataset(GRADIENT_12_BIT)
    dataset.file_meta.TransferSyntaxUID = JPEGLSLossless
    dataset.PixelData = encapsulate([b"\xff\xd8\xff\xf7 not a real codestream \xff\xd9"])
    dataset["PixelData"].VR = "OB"
    return _dicom_bytes(dataset)


def dicom_palette() -> bytes:
    dataset = _dicom_dataset(np.array([[0, 1], [2, 3]], np.uint8), "PALETTE COLOR", bits_stored=8)
    tables = {color: np.zeros(256, np.uint16) for color in ("Red", "Green", "Blue")}
    tables["Red"][1] = tables["Green"][2] = tables["Blue"][3] = 65535
    for color, table in tables.items():
        setattr(dataset, f"{color}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(dataset, f"{color}PaletteColorLookupTableData", table.tobytes())
    return _dicom_bytes(dataset)


def dicom_without_preamble() -> bytes:
    return _dicom_bytes(_dicom_dataset(GRADIENT_12_BIT), preamble=False)


def dicom_without_pixels() -> bytes:
    return _dicom_bytes(_dicom_dataset(None))


def dicom_truncated() -> bytes:
    return _dicom_bytes(_dicom_dataset(GRADIENT_12_BIT))[:-50]


GRADIENT_16_BIT = (np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 20 + 1000)  # 1000 .. 24980


def png_16_bit() -> bytes:
    return _encode(Image.fromarray(GRADIENT_16_BIT), "PNG")


def tiff_16_bit() -> bytes:
    return _encode(Image.fromarray(GRADIENT_16_BIT), "TIFF")


def png_8_bit() -> bytes:
    return _encode(Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16), mode="L"), "PNG")


def png_rgba() -> bytes:
    image = Image.new("RGBA", (16, 16), (255, 0, 0, 128))
    image.paste((0, 255, 0, 0), (0, 0, 8, 16))  # left half fully transparent
    return _encode(image, "PNG")


def png_la() -> bytes:
    image = Image.new("LA", (16, 16), (200, 255))
    image.paste((200, 0), (0, 0, 8, 16))
    return _encode(image, "PNG")


def _palette_image() -> Image.Image:
    image = Image.new("P", (16, 16), 1)
    image.putpalette([0, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    image.paste(2, (0, 0, 8, 16))
    return image


def png_palette() -> bytes:
    return _encode(_palette_image(), "PNG")


def png_palette_transparent() -> bytes:
    return _encode(_palette_image(), "PNG", transparency=2)


def jpeg_cmyk() -> bytes:
    return _encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)


def jpeg_exif_rotated() -> bytes:
    # The image is stored as 40 x 20 with a bright square at the top left. Orientation 6 means
    # "rotate 90 degrees clockwise to display", which moves the square to the top right of a 20 x 40 image.
    image = Image.new("L", (40, 20), 0)
    image.paste(255, (0, 0, 8, 8))
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(image, "JPEG", exif=exif, quality=95)


def gif_animated() -> bytes:
    frames = [Image.new("L", (16, 16), value) for value in (200, 50, 100)]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


def png_truncated() -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, size=(64, 64), dtype=np.uint8)
    data = _encode(Image.fromarray(noise, mode="L"), "PNG")
    return data[: int(len(data) * 0.6)]


def pdf_document() -> bytes:
    return b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"


def zip_archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("slice.png", png_8_bit())
    return buffer.getvalue()


def nifti_header() -> bytes:
    header = bytearray(352)
    header[0:4] = struct.pack("<i", 348)
    header[344:348] = b"n+1\x00"
    return bytes(header)


def png_with_header_size(width: int, height: int) -> bytes:
    """Return a 1 x 1 PNG whose header claims ``width`` x ``height``; only the header is ever read."""
    data = bytearray(_encode(Image.new("L", (1, 1)), "PNG"))
    # The IHDR chunk data starts at byte 16 with width and height; its CRC over type and data is at 29.
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


# Expected results --------------------------------------------------------------------------


def _gray(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int32)


def check_monochrome1(image: Image.Image) -> None:
    pixels = _gray(image)
    assert pixels[0, 0] == 255, "the minimum stored value must display white in MONOCHROME1"
    assert pixels[-1, -1] == 0, "the maximum stored value must display black in MONOCHROME1"


def check_window(image: Image.Image) -> None:
    pixels = _gray(image)
    # Rescaled values: row 0 is -100 .. 440 in steps of 60, row 1 starts at 500.
    assert pixels[0, 6] == 0, "260 is below the window (300 .. 700) and must be black"
    assert pixels[0, 7] == 13, "320 maps to ((320 - 499.5) / 400 + 0.5) * 255"
    assert pixels[1, 0] == 128, "500, the window center, maps to mid-gray"
    assert pixels[2, 0] == 255, "1100 is above the window and must be white"


def check_middle_frame(image: Image.Image) -> None:
    assert np.argwhere(_gray(image) > 0).tolist() == [[2, 2]], "frame 3 of 5 has its bright pixel at (2, 2)"


def check_frame_window(image: Image.Image) -> None:
    pixels = _gray(image)
    assert pixels[0, 0] == 0
    assert pixels[1, 1] == 129, "200 at the center of the frame's own window maps to mid-gray"


def check_gradient_min_max(image: Image.Image) -> None:
    expected = np.round(GRADIENT_12_BIT / GRADIENT_12_BIT.max() * 255)
    assert np.array_equal(_gray(image), expected), "a DICOM without a window is stretched to its own range"


def check_jpeg_dicom(image: Image.Image) -> None:
    difference = np.abs(_gray(image) - np.asarray(JPEG_SOURCE, dtype=np.int32))
    assert difference.max() <= 3, "the JPEG frame decodes close to its source"


def check_palette_dicom(image: Image.Image) -> None:
    assert np.asarray(image).tolist() == [[[0, 0, 0], [255, 0, 0]], [[0, 255, 0], [0, 0, 255]]]


def check_16_bit(image: Image.Image) -> None:
    pixels = _gray(image)
    expected = np.round((GRADIENT_16_BIT.astype(np.float64) - 1000) / (GRADIENT_16_BIT.max() - 1000) * 255)
    assert pixels.min() == 0, "the minimum 16-bit value maps to 0"
    assert pixels.max() == 255, "the maximum 16-bit value maps to 255"
    assert np.array_equal(pixels, expected)


def check_8_bit_unchanged(image: Image.Image) -> None:
    assert np.array_equal(_gray(image), np.arange(256).reshape(16, 16)), "8-bit grayscale is not stretched"


def check_rgba_on_black(image: Image.Image) -> None:
    pixels = np.asarray(image)
    assert pixels[8, 2].tolist() == [0, 0, 0], "fully transparent pixels become black"
    assert pixels[8, 12].tolist() == [128, 0, 0], "half-transparent red becomes half-bright red"


def check_la_on_black(image: Image.Image) -> None:
    pixels = _gray(image)
    assert pixels[8, 2] == 0
    assert pixels[8, 12] == 200


def check_palette(image: Image.Image) -> None:
    pixels = np.asarray(image)
    assert pixels[8, 2].tolist() == [0, 0, 255]
    assert pixels[8, 12].tolist() == [0, 255, 0]


def check_palette_transparent(image: Image.Image) -> None:
    pixels = np.asarray(image)
    assert pixels[8, 2].tolist() == [0, 0, 0], "the transparent palette entry becomes black"
    assert pixels[8, 12].tolist() == [0, 255, 0]


def check_cmyk(image: Image.Image) -> None:
    red, green, blue = np.asarray(image, dtype=np.int32)[8, 8]
    # CMYK (0, 255, 255, 0) is red.
    assert red > 240
    assert green < 15
    assert blue < 15


def check_exif_rotated(image: Image.Image) -> None:
    pixels = _gray(image)
    assert pixels[3, 16] > 200, "the square moves to the top right"
    assert pixels[3, 3] < 50


def check_first_gif_frame(image: Image.Image) -> None:
    assert abs(_gray(image.convert("L"))[8, 8] - 200) <= 2, "the first frame is the one with value 200"


@dataclass
class Case:
    """A generated upload and what loading it must give: an image or an InvalidImageError."""

    file_name: str
    build: Callable[[], bytes]
    mode: str | None = None
    size: tuple[int, int] | None = None
    check: Callable[[Image.Image], None] | None = None
    notice: str | None = None
    error: str | None = None
    marks: list = field(default_factory=list)


requires_no_jpeg_ls_decoder = pytest.mark.skipif(
    get_decoder(JPEGLSLossless).is_available, reason="a JPEG-LS decoder is installed, so the syntax is supported"
)

CASES = [
    Case("monochrome1.dcm", dicom_monochrome1, "L", (10, 12), check_monochrome1),
    Case("window.dcm", dicom_monochrome2_window, "L", (10, 12), check_window),
    Case("bad_window.dcm", dicom_invalid_window, "L", (10, 12), check_gradient_min_max,
         notice=r"'bad_window\.dcm' has an invalid VOI window \(.*\), so the full range of values was used"),
    Case("ct.dcm", dicom_ct, "L", (10, 12), check_gradient_min_max,
         notice=r"'ct\.dcm' is a DICOM image of modality CT, not MR, but the model was trained on MRI slices"),
    Case("multi_frame.dcm", dicom_multi_frame, "L", (8, 8), check_middle_frame,
         notice=r"'multi_frame\.dcm' has 5 frames, and the middle frame \(3 of 5\) was used"),
    Case("enhanced.dcm", dicom_enhanced_multi_frame, "L", (4, 4), check_frame_window,
         notice=r"middle frame \(2 of 3\)"),
    Case("rle.dcm", dicom_rle, "L", (10, 12), check_gradient_min_max),
    Case("jpeg.dcm", dicom_jpeg_baseline, "L", (32, 32), check_jpeg_dicom),
    Case("palette.dcm", dicom_palette, "RGB", (2, 2), check_palette_dicom),
    Case("no_preamble", dicom_without_preamble, "L", (10, 12), check_gradient_min_max),
    Case("dicom_named.png", dicom_monochrome1, "L", (10, 12), check_monochrome1,
         notice=r"'dicom_named\.png' contains DICOM data although its name ends in \.png"),
    Case("jpeg_ls.dcm", dicom_jpeg_ls,
         error=r"'jpeg_ls\.dcm' uses the DICOM transfer syntax JPEG-LS Lossless Image Compression "
         r"\(1\.2\.840\.10008\.1\.2\.4\.80\), which this installation cannot decode\. Export the slice uncompressed",
         marks=[requires_no_jpeg_ls_decoder]),
    Case("no_pixels.dcm", dicom_without_pixels, error=r"'no_pixels\.dcm' is a DICOM file without image pixel data"),
    Case("truncated.dcm", dicom_truncated,
         error=r"'truncated\.dcm' is a DICOM file whose pixel data is damaged, truncated"),
    Case("sixteen.png", png_16_bit, "L", (40, 30), check_16_bit),
    Case("sixteen.tif", tiff_16_bit, "L", (40, 30), check_16_bit),
    Case("eight.png", png_8_bit, "L", (16, 16), check_8_bit_unchanged),
    Case("rgba.png", png_rgba, "RGB", (16, 16), check_rgba_on_black),
    Case("la.png", png_la, "L", (16, 16), check_la_on_black),
    Case("palette.png", png_palette, "RGB", (16, 16), check_palette),
    Case("palette_transparent.png", png_palette_transparent, "RGB", (16, 16), check_palette_transparent),
    Case("cmyk.jpg", jpeg_cmyk, "RGB", (16, 16), check_cmyk),
    Case("rotated.jpg", jpeg_exif_rotated, "L", (20, 40), check_exif_rotated,
         notice=r"'rotated\.jpg' was rotated upright as its EXIF orientation tag \(6\) requests"),
    Case("animated.gif", gif_animated, size=(16, 16), check=check_first_gif_frame,
         notice=r"'animated\.gif' is a GIF file with 3 frames\. Only the first frame was used"),
    Case("png_named.jpg", png_8_bit, "L", (16, 16), check_8_bit_unchanged,
         notice=r"'png_named\.jpg' contains PNG data although its name ends in \.jpg, so it was read as PNG"),
    Case("empty.png", lambda: b"", error=r"'empty\.png' is empty \(0 bytes\)\. Upload the slice again"),
    Case("truncated.png", png_truncated,
         error=r"'truncated\.png' is damaged or truncated and cannot be decoded \(OSError\)\. Export the slice again"),
    Case("report.jpg", pdf_document,
         error=r"'report\.jpg' is a PDF document, not an image although its name ends in \.jpg\. Export the slice"),
    Case("archive.png", zip_archive, error=r"'archive\.png' is a ZIP archive or Office document, not an image"),
    Case("brain.nii", nifti_header, error=r"'brain\.nii' is a NIfTI volume, not an image.*single 2D slice"),
    Case("notes.png", lambda: b"this is text, not an image",
         error=r"'notes\.png' is not an image file that Pillow can read\. Upload the slice as a PNG, JPEG, TIFF or DICOM"),
    Case("huge.png", lambda: png_with_header_size(10_000, 6_000),
         error=r"'huge\.png' has 10000 x 6000 = 60 MP, above the limit of 50 MP per image\. Downscale"),
    Case("bomb.png", lambda: png_with_header_size(20_000, 20_000),
         error=r"'bomb\.png' has 400 MP, above the limit of 50 MP per image"),
]


# A real slice in every format ----------------------------------------------------------------


def full_range(image: Image.Image) -> Image.Image:
    """Return ``image`` as 8-bit grayscale stretched to 0..255, so that every lossless variant decodes back to it."""
    pixels = np.asarray(image.convert("L"), dtype=np.float64)
    low, high = pixels.min(), pixels.max()
    return Image.fromarray(np.round((pixels - low) / (high - low) * 255).astype(np.uint8), mode="L")


def _slice_dicom(pixels: np.ndarray, photometric: str = "MONOCHROME2", bits_stored: int = 8) -> Dataset:
    return _dicom_dataset(pixels, photometric, bits_stored)


def slice_dicom_monochrome1(base: Image.Image) -> bytes:
    return _dicom_bytes(_slice_dicom(255 - np.asarray(base), "MONOCHROME1"))


def slice_dicom_window(base: Image.Image) -> bytes:
    # Stored s = b + 50 rescales to x = 2 s - 100 = 2 b. The linear window with center 255.5 and
    # width 511 maps x to ((x - 255) / 510 + 0.5) * 255 = b, so the display values are the slice.
    dataset = _slice_dicom(np.asarray(base).astype(np.uint16) + 50, bits_stored=12)
    dataset.RescaleSlope = 2
    dataset.RescaleIntercept = -100
    dataset.WindowCenter = "255.5"
    dataset.WindowWidth = 511
    return _dicom_bytes(dataset)


def slice_dicom_multi_frame(base: Image.Image) -> bytes:
    pixels = np.asarray(base)
    return _dicom_bytes(_slice_dicom(np.stack([np.zeros_like(pixels), pixels, 255 - pixels])))


def slice_dicom_rle(base: Image.Image) -> bytes:
    dataset = _slice_dicom(np.asarray(base))
    dataset.compress(RLELossless)
    return _dicom_bytes(dataset)


def slice_dicom_jpeg_baseline(base: Image.Image) -> bytes:
    dataset = _slice_dicom(np.asarray(base))
    dataset.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    dataset.PixelData = encapsulate([_encode(base, "JPEG", quality=95)])
    dataset["PixelData"].VR = "OB"
    return _dicom_bytes(dataset)


def slice_dicom_without_preamble(base: Image.Image) -> bytes:
    return _dicom_bytes(_slice_dicom(np.asarray(base)), preamble=False)


def slice_16_bit(base: Image.Image, image_format: str) -> bytes:
    # 257 b spans 0..65535, and stretching it back to 8 bits gives b.
    return _encode(Image.fromarray(np.asarray(base).astype(np.uint16) * 257), image_format)


def slice_with_alpha(base: Image.Image, mode: str) -> bytes:
    image = base.convert(mode)
    image.putalpha(255)
    return _encode(image, "PNG")


def slice_palette(base: Image.Image) -> bytes:
    image = Image.frombytes("P", base.size, base.tobytes())
    image.putpalette([value for level in range(256) for value in (level, level, level)])
    return _encode(image, "PNG")


def slice_exif_rotated(base: Image.Image, image_format: str, **options) -> bytes:
    # Stored turned 90 degrees counterclockwise, with orientation 6 ("rotate 90 degrees clockwise to display").
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(base.transpose(Image.Transpose.ROTATE_90), image_format, exif=exif, **options)


def slice_animated_gif(base: Image.Image) -> bytes:
    frames = [Image.new("L", base.size, value) for value in (0, 255)]
    return _encode(base, "GIF", save_all=True, append_images=frames, duration=100)


@dataclass
class SliceVariant:
    """A real slice encoded in one format.

    ``exact`` variants decode to the very pixels of the full-range slice, so they must give its
    probabilities. The others are lossy and must give its top label.
    """

    file_name: str
    build: Callable[[Image.Image], bytes]
    exact: bool = True
    notice: str | None = None


SLICE_VARIANTS = [
    SliceVariant("slice_monochrome1.dcm", slice_dicom_monochrome1),
    SliceVariant("slice_window.dcm", slice_dicom_window),
    SliceVariant("slice_multi_frame.dcm", slice_dicom_multi_frame,
                 notice=r"'slice_multi_frame\.dcm' has 3 frames, and the middle frame \(2 of 3\) was used"),
    SliceVariant("slice_rle.dcm", slice_dicom_rle),
    SliceVariant("slice_jpeg.dcm", slice_dicom_jpeg_baseline, exact=False),
    SliceVariant("slice_no_preamble", slice_dicom_without_preamble),
    SliceVariant("slice_dicom_named.png", slice_dicom_monochrome1,
                 notice=r"'slice_dicom_named\.png' contains DICOM data although its name ends in \.png"),
    SliceVariant("slice_eight.png", lambda base: _encode(base, "PNG")),
    SliceVariant("slice_sixteen.png", lambda base: slice_16_bit(base, "PNG")),
    SliceVariant("slice_sixteen.tif", lambda base: slice_16_bit(base, "TIFF")),
    SliceVariant("slice_rgb.png", lambda base: _encode(base.convert("RGB"), "PNG")),
    SliceVariant("slice_rgba.png", lambda base: slice_with_alpha(base, "RGB")),
    SliceVariant("slice_la.png", lambda base: slice_with_alpha(base, "L")),
    SliceVariant("slice_palette.png", slice_palette),
    SliceVariant("slice_cmyk.tif", lambda base: _encode(base.convert("RGB").convert("CMYK"), "TIFF")),
    SliceVariant("slice_cmyk.jpg", lambda base: _encode(base.convert("RGB").convert("CMYK"), "JPEG", quality=95),
                 exact=False),
    SliceVariant("slice_rotated.png", lambda base: slice_exif_rotated(base, "PNG"),
                 notice=r"'slice_rotated\.png' was rotated upright as its EXIF orientation tag \(6\) requests"),
    SliceVariant("slice_rotated.jpg", lambda base: slice_exif_rotated(base, "JPEG", quality=95), exact=False,
                 notice=r"'slice_rotated\.jpg' was rotated upright as its EXIF orientation tag \(6\) requests"),
    SliceVariant("slice_animated.gif", slice_animated_gif,
                 notice=r"'slice_animated\.gif' is a GIF file with 3 frames\. Only the first frame was used"),
    SliceVariant("slice_png_named.jpg", lambda base: _encode(base, "PNG"),
                 notice=r"'slice_png_named\.jpg' contains PNG data although its name ends in \.jpg"),
]


# Images that are not brain MRI slices ------------------------------------------------------


def _text_page(lines: list[str], size: int = 256) -> Image.Image:
    image = Image.new("L", (size, size), 235)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=16)
    for row, line in enumerate(lines):
        draw.text((10, 12 + 24 * row), line, fill=25, font=font)
    return image


def _matplotlib_photo() -> Image.Image | None:
    """Return matplotlib's bundled photo grace_hopper.jpg, or None when matplotlib or the file is missing."""
    try:
        from matplotlib import cbook

        path = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    except (ImportError, OSError, ValueError):
        return None
    with Image.open(path) as opened:
        return opened.convert("RGB")


def out_of_scope_images() -> dict[str, Image.Image | None]:
    """Build one image per kind of non-MRI upload, keyed by file name. None marks one that cannot be built here.

    All but the black image differ from the images that ``train.calibrate`` set the threshold
    with: other noise, another gray level, other text and another crop of the photo.
    """
    rng = np.random.default_rng(2024)
    photo = _matplotlib_photo()
    return {
        "noise.png": Image.fromarray(rng.integers(0, 256, (300, 300), dtype=np.uint8), mode="L"),
        "color_noise.png": Image.fromarray(rng.integers(0, 256, (200, 240, 3), dtype=np.uint8), mode="RGB"),
        "flat_gray.png": Image.new("L", (320, 320), 100),
        "flat_black.png": Image.new("L", (320, 320), 0),
        "text.png": _text_page(["Radiology report", "Findings: none", "Signed 2024-03-01", "Page 2 of 2"]),
        "photo.jpg": None if photo is None else photo.crop((100, 50, 420, 370)),
    }
