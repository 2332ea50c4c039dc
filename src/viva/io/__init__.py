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

from viva.io.clip import DEFAULT_FOLDER_FPS, VideoInfo
from viva.io.frames import fit_to_model, resize_center_crop, sample_frames
from viva.io.image import IMAGE_FORMATS, read_image, write_image
from viva.io.limits import VideoLimits
from viva.io.sampling import sample_indices
from viva.io.video import probe_video, read_video
from viva.io.writer import VIDEO_FORMATS, write_video

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
