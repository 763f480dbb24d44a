"""Decoding of uploaded slices into 8-bit images: DICOM, PNG, TIFF, JPEG and the other formats Pillow reads.

``load_upload`` turns a file path, raw bytes or a PIL image into a PIL image of mode ``L``
(grayscale) or ``RGB`` that the model's preprocessing accepts. It also returns notices about
choices it made, such as which frame of a multi-frame file it used. Every rejected input
raises ``InvalidImageError`` with a message that names the problem and the fix.

Messages and notices may contain the file name, which the caller shows to the user who sent
the file. They never contain pixel values or DICOM attributes. DICOM files are read with
``specific_tags``, so pydicom does not even parse the patient and study elements.
"""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import numpy as np
import pydicom
from PIL import Image, ImageOps, UnidentifiedImageError
from pydicom.dataset import Dataset
from pydicom.pixels.decoders.base import Decoder
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, apply_windowing, get_decoder, pixel_array
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

__all__ = [
    "InvalidImageError",
    "LoadedImage",
    "MAX_FILE_SIZE_BYTES",
    "MAX_IMAGE_PIXELS",
    "UploadSource",
    "load_upload",
]

# 20 MiB, which fits an uncompressed 16-bit DICOM slice of 3000 x 3000 pixels. Gradio's
# launch(max_file_size=...) takes the same number of bytes, so oversized uploads are rejected
# before they reach the server's disk.
MAX_FILE_SIZE_BYTES = 20 * 1024 * 1024
# Largest image decoded, in pixels per frame. MRI slices have well under a megapixel, and
# Pillow's own decompression-bomb limit (Image.MAX_IMAGE_PIXELS, about 89 MP in Pillow 12) is
# far above what this app needs.
MAX_IMAGE_PIXELS = 50_000_000

UploadSource = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image]

# The format that each common file extension promises. A file whose content has another
# format is still read, with a notice.
EXTENSION_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".jpe": "JPEG",
    ".jfif": "JPEG",
    ".tif": "TIFF",
    ".tiff": "TIFF",
    ".bmp": "BMP",
    ".gif": "GIF",
    ".webp": "WEBP",
    ".dcm": "DICOM",
    ".dicom": "DICOM",
    ".ima": "DICOM",
}
# Pillow reports multi-picture camera JPEGs as MPO, which is JPEG for the user.
_PILLOW_FORMAT_ALIASES = {"MPO": "JPEG"}
_SUPPORTED_FORMATS = "PNG, JPEG, TIFF or DICOM"

# DICOM elements read from an upload: the image pixel module, the modality and VOI LUT modules,
# the functional groups that carry per-frame rescale and window values in enhanced multi-frame
# files, and the modality. Everything else, including all patient and study elements, is skipped.
_DICOM_TAGS = [
    "SOPClassUID",
    "Modality",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "RescaleIntercept",
    "RescaleSlope",
    "RescaleType",
    "ModalityLUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "VOILUTSequence",
    "RedPaletteColorLookupTableDescriptor",
    "GreenPaletteColorLookupTableDescriptor",
    "BluePaletteColorLookupTableDescriptor",
    "RedPaletteColorLookupTableData",
    "GreenPaletteColorLookupTableData",
    "BluePaletteColorLookupTableData",
    "SegmentedRedPaletteColorLookupTableData",
    "SegmentedGreenPaletteColorLookupTableData",
    "SegmentedBluePaletteColorLookupTableData",
    "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
    "FloatPixelData",
    "DoubleFloatPixelData",
    "PixelData",
]
_DICOM_PREAMBLE_LENGTH = 128
_EXIF_ORIENTATION = 0x0112


class InvalidImageError(ValueError):
    """The input is missing, unreadable or not an image the model can use.

    ``reason`` is a short fixed phrase such as ``"empty file"``. Unlike the message, it never contains a
    file name or a value read from the file, so servers can log it.
    """

    def __init__(self, message: str, reason: str = "unreadable image") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class LoadedImage:
    """A decoded upload: an 8-bit ``L`` or ``RGB`` image and notices about how it was read."""

    image: Image.Image
    notices: list[str] = field(default_factory=list)


@dataclass
class _Upload:
    """The bytes of an upload, with the words that name it in messages."""

    data: bytes
    subject: str  # starts a sentence: "'scan.png'" or "The upload"
    extension: str  # lower case with the dot, or "" when unknown


def load_upload(source: UploadSource, *, name: str | None = None) -> LoadedImage:
    """Decode a file path, raw bytes or PIL image into an 8-bit ``L`` or ``RGB`` image.

    ``name`` is the original file name of ``bytes`` input. It is used in messages and to check
    that the content matches the extension. Raises ``InvalidImageError`` for missing, empty,
    oversized, damaged or non-image input and for DICOM files this installation cannot decode.
    """
    if isinstance(source, Image.Image):
        notices: list[str] = []
        return LoadedImage(_normalize_pil(source, "The image", notices), notices)
    if isinstance(source, (bytes, bytearray, memoryview)):
        upload = _upload_from_bytes(bytes(source), name)
    elif isinstance(source, (str, os.PathLike)):
        upload = _upload_from_path(Path(source))
    else:
        raise InvalidImageError(
            f"Expected a PIL image, image bytes or an image file path, got {type(source).__name__}. "
            "Pass the slice as one of those.",
            reason="wrong input type",
        )
    return _decode(upload)


# Reading -----------------------------------------------------------------------------------


def _upload_from_path(path: Path) -> _Upload:
    subject = repr(path.name)
    if not path.is_file():
        raise InvalidImageError(
            f"Image file {subject} was not found. Check the path and upload the file again.", reason="file not found"
        )
    size = path.stat().st_size
    _check_file_size(size, subject)
    # Reading one byte past the limit catches a file that grew after stat().
    with path.open("rb") as file:
        data = file.read(MAX_FILE_SIZE_BYTES + 1)
    _check_file_size(len(data), subject)
    return _Upload(data, subject, path.suffix.lower())


def _upload_from_bytes(data: bytes, name: str | None) -> _Upload:
    subject = repr(Path(name).name) if name else "The upload"
    _check_file_size(len(data), subject)
    return _Upload(data, subject, Path(name).suffix.lower() if name else "")


def _check_file_size(size: int, subject: str) -> None:
    if size == 0:
        raise InvalidImageError(f"{subject} is empty (0 bytes). Upload the slice again.", reason="empty file")
    if size > MAX_FILE_SIZE_BYTES:
        raise InvalidImageError(
            f"{subject} is {size / 2**20:.1f} MiB, above the {MAX_FILE_SIZE_BYTES / 2**20:.0f} MiB limit for "
            "uploads. Upload a single slice, for example exported as PNG.",
            reason="file too large",
        )


def _decode(upload: _Upload) -> LoadedImage:
    if _has_dicom_preamble(upload.data):
        return _decode_dicom(upload, _read_dicom(upload.data))
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own pixel limit; _check_pixel_count rejects those images anyway.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(upload.data))
    except UnidentifiedImageError:
        dataset = _read_dicom_without_preamble(upload.data)
        if dataset is not None:
            return _decode_dicom(upload, dataset)
        raise InvalidImageError(_not_an_image_message(upload), reason="not an image") from None
    except Image.DecompressionBombError as error:
        # Pillow raises this from open() for images above twice its limit, before the size is known
        # to the caller, so the pixel count is taken from its message.
        match = re.search(r"\((\d+) pixels\)", str(error))
        count = f"{int(match.group(1)) / 1e6:.0f} MP" if match else "too many pixels"
        raise InvalidImageError(_too_many_pixels_message(upload.subject, count), reason="too many pixels") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise InvalidImageError(_damaged_message(upload.subject, error), reason="damaged image") from error
    with opened:
        notices = _format_notices(upload, _PILLOW_FORMAT_ALIASES.get(opened.format, opened.format))
        image = _normalize_pil(opened, upload.subject, notices)
    return LoadedImage(image, notices)


def _format_notices(upload: _Upload, detected_format: str | None) -> list[str]:
    expected = EXTENSION_FORMATS.get(upload.extension)
    if expected is None or detected_format is None or expected == detected_format:
        return []
    return [
        f"{upload.subject} contains {detected_format} data although its name ends in {upload.extension}, "
        f"so it was read as {detected_format}."
    ]


def _not_an_image_message(upload: _Upload) -> str:
    known = _identify_non_image(upload.data)
    if known is None:
        return (
            f"{upload.subject} is not an image file that Pillow can read. "
            f"Upload the slice as a {_SUPPORTED_FORMATS} file."
        )
    kind, fix = known
    renamed = f" although its name ends in {upload.extension}" if upload.extension else ""
    return f"{upload.subject} is {kind}, not an image{renamed}. {fix}"


def _identify_non_image(data: bytes) -> tuple[str, str] | None:
    """Return a description and a fix for well-known non-image formats, found by their magic numbers."""
    if data.startswith(b"%PDF"):
        return "a PDF document", f"Export the slice from the document as a {_SUPPORTED_FORMATS} file and upload that."
    if data.startswith(b"PK\x03\x04"):
        return "a ZIP archive or Office document", "Extract the slice and upload the image file on its own."
    if data.startswith(b"\x1f\x8b"):
        return "a gzip-compressed file", "Decompress it and upload the image file inside."
    # NIfTI-1 stores the header size 348 in its first 4 bytes (in either byte order) and "n+1" or
    # "ni1" at byte 344. NIfTI-2 stores "n+2" or "ni2" at byte 4.
    is_nifti_1 = (
        len(data) >= 348
        and 348 in struct.unpack("<i", data[:4]) + struct.unpack(">i", data[:4])
        and data[344:348] in (b"n+1\x00", b"ni1\x00")
    )
    is_nifti_2 = len(data) >= 8 and data[4:8] in (b"n+2\x00", b"ni2\x00")
    if is_nifti_1 or is_nifti_2:
        return "a NIfTI volume", f"Export a single 2D slice of the volume as a {_SUPPORTED_FORMATS} file."
    return None


def _damaged_message(subject: str, error: Exception) -> str:
    return (
        f"{subject} is damaged or truncated and cannot be decoded ({type(error).__name__}). "
        "Export the slice again as a PNG file."
    )


def _too_many_pixels_message(subject: str, count: str) -> str:
    return (
        f"{subject} has {count}, above the limit of {MAX_IMAGE_PIXELS / 1e6:.0f} MP per image. "
        "Downscale the slice to a few thousand pixels per side."
    )


# Pillow images -----------------------------------------------------------------------------


def _normalize_pil(image: Image.Image, subject: str, notices: list[str]) -> Image.Image:
    """Return the first frame of ``image``, upright per its EXIF orientation, as 8-bit ``L`` or ``RGB``."""
    if image.width < 1 or image.height < 1:
        raise InvalidImageError(
            f"{subject} has no pixels ({image.width} x {image.height}). Upload a real slice.", reason="no pixels"
        )
    _check_pixel_count(image.width, image.height, subject)
    return _to_8_bit(_upright_first_frame(image, subject, notices), subject)


def _check_pixel_count(width: int, height: int, subject: str) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise InvalidImageError(
            _too_many_pixels_message(subject, f"{width} x {height} = {width * height / 1e6:.0f} MP"),
            reason="too many pixels",
        )


def _upright_first_frame(image: Image.Image, subject: str, notices: list[str]) -> Image.Image:
    """Return a decoded copy of the first frame, transposed per the EXIF orientation tag.

    ``image`` is left at the frame it was on, because the caller may own it.
    """
    try:
        frame_count = getattr(image, "n_frames", 1)
        current = image.tell()
        if current != 0:
            image.seek(0)
        image.load()
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
        # exif_transpose returns a copy even when the orientation is already upright.
        frame = ImageOps.exif_transpose(image)
        if current != 0:
            image.seek(current)
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        # Pillow raises these for truncated or corrupt data after the header was recognized.
        raise InvalidImageError(_damaged_message(subject, error), reason="damaged image") from error
    if frame_count > 1:
        kind = image.format or "image"
        notices.append(f"{subject} is a {kind} file with {frame_count} frames. Only the first frame was used.")
    if orientation not in (1, None):
        notices.append(f"{subject} was rotated upright as its EXIF orientation tag ({orientation}) requests.")
    return frame


def _to_8_bit(image: Image.Image, subject: str) -> Image.Image:
    mode = image.mode
    if mode in ("L", "RGB"):
        return image
    if mode == "1":
        return image.convert("L")
    if mode.startswith("I") or mode == "F":
        # 16-bit, 32-bit and float grayscale: stretched to their own range, as training does.
        return Image.fromarray(_rescale_to_uint8(np.asarray(image)), mode="L")
    if mode in ("LA", "La"):
        return _composite_on_black(image.convert("LA"), "L")
    if mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in image.info):
        return _composite_on_black(image.convert("RGBA"), "RGB")
    if mode in ("P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        return image.convert("RGB")
    raise InvalidImageError(
        f"{subject} has the pixel mode {mode!r}, which cannot be converted to grayscale. "
        "Export the slice as an 8-bit or 16-bit grayscale PNG file.",
        reason="unsupported pixel mode",
    )


def _composite_on_black(image: Image.Image, mode: str) -> Image.Image:
    # MRI background is black, so transparent areas become background rather than white.
    array = np.asarray(image, dtype=np.float32)
    color, alpha = array[..., :-1], array[..., -1:] / 255.0
    composite = np.round(color * alpha).astype(np.uint8)
    return Image.fromarray(composite[..., 0] if mode == "L" else composite, mode=mode)


def _rescale_to_uint8(array: np.ndarray) -> np.ndarray:
    """Stretch an array linearly from its own minimum and maximum to uint8 0..255 (all zeros if flat).

    This is the formula ``preprocessing.square_grayscale`` uses for 16-bit images, so a 16-bit
    upload gives the same pixels as the same file seen in training.
    """
    array = np.asarray(array, dtype=np.float64)
    low, high = float(array.min()), float(array.max())
    scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
    return scaled.round().astype(np.uint8)


# DICOM -------------------------------------------------------------------------------------


def _has_dicom_preamble(data: bytes) -> bool:
    return data[_DICOM_PREAMBLE_LENGTH : _DICOM_PREAMBLE_LENGTH + 4] == b"DICM"


def _read_dicom_without_preamble(data: bytes) -> Dataset | None:
    """Parse a DICOM stream that lacks the 128-byte preamble, as old ACR-NEMA style files do.

    Such a stream starts with a group 0x0002 (file meta) or 0x0008 (identification) tag in
    little-endian order. Returns None for anything else.
    """
    if data[:2] not in (b"\x02\x00", b"\x08\x00"):
        return None
    dataset = _read_dicom(data)
    return dataset if dataset is not None and "Rows" in dataset else None


def _read_dicom(data: bytes) -> Dataset | None:
    """Parse the image elements of a DICOM stream, returning None if it does not parse."""
    try:
        # NOTE: catch_warnings swaps the process-wide filters and is not thread-safe before
        # Python 3.14, so a concurrent request may briefly see warnings silenced or not.
        with warnings.catch_warnings():
            # pydicom's validation warnings can quote element values.
            warnings.simplefilter("ignore")
            return pydicom.dcmread(io.BytesIO(data), force=True, specific_tags=_DICOM_TAGS)
    # Parsing arbitrary bytes can fail in many ways inside pydicom, and every one of them means
    # "not a readable DICOM file" here.
    except Exception:  # noqa: BLE001
        return None


def _decode_dicom(upload: _Upload, dataset: Dataset | None) -> LoadedImage:
    if dataset is None or "Rows" not in dataset or "Columns" not in dataset:
        raise InvalidImageError(
            f"{upload.subject} is a DICOM file without image pixel data, or a damaged one (for example "
            "a report, a DICOMDIR or a truncated transfer). Upload a DICOM image of a single MRI slice.",
            reason="DICOM without pixel data",
        )
    notices = _format_notices(upload, "DICOM")
    modality = str(dataset.get("Modality", "") or "")
    if modality and modality != "MR":
        notices.append(
            f"{upload.subject} is a DICOM image of modality {modality}, not MR, but the model was trained on "
            "MRI slices."
        )
    _check_pixel_count(int(dataset.Columns), int(dataset.Rows), upload.subject)
    frame_count = int(dataset.get("NumberOfFrames", 1) or 1)
    frame_index = frame_count // 2
    if frame_count > 1:
        notices.append(
            f"{upload.subject} has {frame_count} frames, and the middle frame ({frame_index + 1} of "
            f"{frame_count}) was used. Upload a single-frame file to classify another slice."
        )
    pixels = _decode_dicom_frame(dataset, frame_index if frame_count > 1 else None, upload.subject)
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric in ("MONOCHROME1", "MONOCHROME2"):
        attributes = _frame_attributes(dataset, frame_index)
        image = _dicom_grayscale(pixels, attributes, photometric, upload.subject, notices)
    else:
        image = _dicom_color(pixels, dataset, photometric, upload.subject)
    return LoadedImage(image, notices)


def _decode_dicom_frame(dataset: Dataset, frame_index: int | None, subject: str) -> np.ndarray:
    """Decode one frame (``frame_index``) or the only frame (None) of the pixel data."""
    if "TransferSyntaxUID" not in dataset.file_meta:
        # A stream without file meta has no transfer syntax element, so the encoding that pydicom
        # detected while parsing is used instead. Such streams are never compressed.
        implicit_vr, little_endian = dataset.original_encoding
        if implicit_vr:
            dataset.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        else:
            dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if little_endian else ExplicitVRBigEndian
    syntax = dataset.file_meta.TransferSyntaxUID
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        # pydicom has no decoder at all for this syntax, for example for MPEG video.
        decoder = None
    if decoder is None or not decoder.is_available:
        raise InvalidImageError(
            _unsupported_syntax_message(subject, syntax, decoder), reason="unsupported DICOM transfer syntax"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pixel_array(dataset, index=frame_index)
    except (ValueError, RuntimeError, NotImplementedError, EOFError, AttributeError, KeyError) as error:
        # pydicom raises these for pixel data shorter than Rows x Columns x frames, inconsistent
        # pixel module values and codec failures.
        raise InvalidImageError(
            f"{subject} is a DICOM file whose pixel data is damaged, truncated or does not match its image "
            f"attributes ({type(error).__name__}). Export the slice again, uncompressed, or as a PNG file.",
            reason="damaged DICOM pixel data",
        ) from error


def _unsupported_syntax_message(subject: str, syntax: UID, decoder: Decoder | None) -> str:
    message = (
        f"{subject} uses the DICOM transfer syntax {syntax.name} ({syntax}), which this installation cannot "
        "decode. Export the slice uncompressed (Explicit VR Little Endian) or as a PNG file"
    )
    missing = getattr(decoder, "missing_dependencies", None) if decoder is not None else None
    if missing:
        message += f", or install one of these decoders: {'; '.join(missing)}"
    return message + "."


def _frame_attributes(dataset: Dataset, frame_index: int) -> Dataset:
    """Collect the rescale, LUT and window attributes that apply to one frame.

    Enhanced multi-frame files (Enhanced MR Image Storage and others) keep rescale and window
    values in the shared and per-frame functional groups rather than at the top level, and the
    per-frame values override the shared ones.
    """
    attributes = Dataset()
    for keyword in (
        "PhotometricInterpretation",
        "BitsStored",
        "PixelRepresentation",
        "RescaleSlope",
        "RescaleIntercept",
        "RescaleType",
        "ModalityLUTSequence",
        "WindowCenter",
        "WindowWidth",
        "VOILUTFunction",
        "VOILUTSequence",
    ):
        if keyword in dataset:
            setattr(attributes, keyword, dataset[keyword].value)
    groups = []
    if dataset.get("SharedFunctionalGroupsSequence"):
        groups.append(dataset.SharedFunctionalGroupsSequence[0])
    per_frame = dataset.get("PerFrameFunctionalGroupsSequence")
    if per_frame and frame_index < len(per_frame):
        groups.append(per_frame[frame_index])
    for group in groups:
        for macro, keywords in (
            ("PixelValueTransformationSequence", ("RescaleSlope", "RescaleIntercept", "RescaleType")),
            ("FrameVOILUTSequence", ("WindowCenter", "WindowWidth", "VOILUTFunction")),
        ):
            if group.get(macro):
                item = group[macro][0]
                for keyword in keywords:
                    if keyword in item:
                        setattr(attributes, keyword, item[keyword].value)
    return attributes


def _dicom_grayscale(
    pixels: np.ndarray, attributes: Dataset, photometric: str, subject: str, notices: list[str]
) -> Image.Image:
    if pixels.ndim != 2:
        raise InvalidImageError(
            f"{subject} is a grayscale DICOM image with an unexpected pixel shape {pixels.shape}. "
            "Export the slice as a single-frame DICOM or PNG file.",
            reason="unexpected DICOM pixel shape",
        )
    gray = _grayscale_display_values(pixels, attributes, subject, notices)
    if photometric == "MONOCHROME1":
        # MONOCHROME1 displays the minimum value as white.
        gray = 255 - gray
    return Image.fromarray(gray, mode="L")


def _dicom_color(pixels: np.ndarray, dataset: Dataset, photometric: str, subject: str) -> Image.Image:
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, dataset)
        if pixels.dtype != np.uint8:
            # 16-bit palette entries span 0..65535, and 65535 / 257 = 255.
            pixels = np.round(pixels / 257.0).astype(np.uint8)
    elif photometric not in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT"):
        raise InvalidImageError(
            f"{subject} uses the DICOM photometric interpretation {photometric}, which is not supported. "
            "Export the slice as a grayscale (MONOCHROME2) DICOM or PNG file.",
            reason="unsupported DICOM photometric interpretation",
        )
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise InvalidImageError(
            f"{subject} is a color DICOM image with an unexpected pixel shape {pixels.shape}. "
            "Export the slice as a PNG file.",
            reason="unexpected DICOM pixel shape",
        )
    # pydicom has converted YBR to RGB already. Samples wider than 8 bits are stretched to their range.
    rgb = pixels if pixels.dtype == np.uint8 else _rescale_to_uint8(pixels)
    return Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")


def _grayscale_display_values(
    pixels: np.ndarray, attributes: Dataset, subject: str, notices: list[str]
) -> np.ndarray:
    """Map stored grayscale values to 8-bit display values (MONOCHROME2 orientation)."""
    values = apply_modality_lut(pixels, attributes)
    if attributes.get("VOILUTSequence"):
        # A VOI LUT's third descriptor value is the bit depth of its output (DICOM PS3.3 C.11.2.1.1).
        bits = int(attributes.VOILUTSequence[0].LUTDescriptor[2])
        output = apply_voi(values, attributes)
        return np.clip(np.round(output.astype(np.float64) * 255.0 / (2**bits - 1)), 0, 255).astype(np.uint8)
    if "WindowCenter" in attributes and "WindowWidth" in attributes:
        try:
            return _window_to_uint8(values, attributes)
        except (ValueError, TypeError, IndexError) as error:
            notices.append(
                f"{subject} has an invalid VOI window ({error}), so the full range of values was used instead."
            )
    return _rescale_to_uint8(values)


def _window_to_uint8(values: np.ndarray, attributes: Dataset) -> np.ndarray:
    # pydicom windows onto the range of the stored bit depth. A display dataset of unsigned 8-bit
    # samples without rescale makes that range 0..255, so the window maps straight to display
    # values. The modality LUT was applied to ``values`` already. With several windows the first
    # one is used, which DICOM names the default.
    display = Dataset()
    display.PhotometricInterpretation = "MONOCHROME2"
    display.BitsStored = 8
    display.PixelRepresentation = 0
    display.WindowCenter = attributes.WindowCenter
    display.WindowWidth = attributes.WindowWidth
    if "VOILUTFunction" in attributes:
        display.VOILUTFunction = attributes.VOILUTFunction
    windowed = apply_windowing(np.asarray(values, dtype=np.float64), display)
    return np.clip(np.round(windowed), 0, 255).astype(np.uint8)
