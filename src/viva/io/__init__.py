"""Video and image I/O: probing, decoding, sampling, resizing and atomic writing of uint8 RGB clips.

Clips are numpy arrays [T,H,W,3] uint8; images are [H,W,3] uint8. User-fixable problems (missing or
corrupt files, unsupported formats, absurd requests, limits) raise `viva.errors.VivaUserError`; malformed
arrays passed by code raise `ValueError`.

Rules worth knowing:
- frame selection (read_video, sample_frames, fit_to_model): see `viva.io.sampling`.
- truncated/corrupt videos are an error unless every requested frame decoded before the damage.
- transparent images are flattened onto white (`read_image(background=...)` to change).
- H.264/VP9/MPEG-4 need even sizes: `write_video` pads an odd height/width by repeating the last row/column.
- display rotation (phone videos) is applied on read; sizes in `VideoInfo` are as displayed.
- outputs are written to a hidden temporary file in the same folder, then renamed over the target.
"""

# Exports are imported on first use (PEP 562): `viva.io.atomic` and the other PyAV-free helpers stay
# importable on machines without PyAV (training machines), and `import viva.io` stays cheap.
_EXPORTS: dict[str, str] = {
    "DEFAULT_FOLDER_FPS": "clip",
    "VideoInfo": "clip",
    "fit_to_model": "frames",
    "resize_center_crop": "frames",
    "sample_frames": "frames",
    "IMAGE_FORMATS": "image",
    "read_image": "image",
    "write_image": "image",
    "VideoLimits": "limits",
    "sample_indices": "sampling",
    "probe_video": "video",
    "read_video": "video",
    "VIDEO_FORMATS": "writer",
    "write_video": "writer",
}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'viva.io' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"viva.io.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "DEFAULT_FOLDER_FPS",
    "IMAGE_FORMATS",
    "VIDEO_FORMATS",
    "VideoInfo",
    "VideoLimits",
    "fit_to_model",
    "probe_video",
    "read_image",
    "read_video",
    "resize_center_crop",
    "sample_frames",
    "sample_indices",
    "write_image",
    "write_video",
]
