"""Videos: reading files and frame folders with sampling, clear errors, and the Qwen-VL pixel layout."""

import numpy as np
import pytest
from PIL import Image

from luvc import LuvcError
from luvc.models import load_model
from luvc.videos import load_video, qwen_video_pixels, synthetic_video
from tests.conftest import write_clip


def test_a_file_is_sampled_by_count_or_by_rate(tmp_path):
    clip = write_clip(tmp_path / "clip.mp4")
    by_count = load_video(clip, num_frames=5)
    assert by_count.frame_indices == (0, 5, 10, 15, 20) and by_count.fps == 10.0
    assert by_count.size == (64, 96)
    grey = [int(np.asarray(frame).mean().round()) for frame in by_count.frames]
    assert grey == pytest.approx([0, 50, 100, 150, 200], abs=3)  # the sampled frames, decoded
    by_rate = load_video(clip, fps=2)  # 2.5 s at 10 fps: 2 frames a second
    assert by_rate.frame_indices == (0, 5, 10, 15, 20)
    assert by_rate.seconds_per_frame == pytest.approx(0.5)
    assert len(load_video(clip).frames) == 25


def test_a_folder_of_frames_in_name_order(tmp_path):
    for index in (2, 0, 1, 3):
        Image.new("RGB", (32, 24), (40 * index,) * 3).save(tmp_path / f"frame_{index:03d}.png")
    video = load_video(tmp_path, num_frames=2)
    assert [frame.getpixel((0, 0))[0] for frame in video.frames] == [0, 80]
    assert video.fps is None and video.seconds_per_frame is None


@pytest.mark.parametrize(
    ("make", "kwargs", "message"),
    [
        (lambda d: d / "missing.mp4", {}, "does not exist"),
        (lambda d: d, {}, "holds no frames"),
        (lambda d: (d / "bad.mp4").write_bytes(b"not a video" * 50) and d / "bad.mp4", {}, "Cannot read .* as a video"),
        (lambda d: write_clip(d / "c.mp4", frames=4), {"num_frames": 9}, "has 4 frames; sample between 1 and 4"),
        (lambda d: write_clip(d / "c.mp4", frames=4), {"num_frames": 2, "fps": 1.0}, "not both"),
    ],
)
def test_bad_videos_are_named(tmp_path, make, kwargs, message):
    with pytest.raises(LuvcError, match=message):
        load_video(make(tmp_path), **kwargs)


def test_frames_of_different_sizes_and_rate_sampling_of_a_folder_are_refused(tmp_path):
    Image.new("RGB", (32, 24)).save(tmp_path / "a.png")
    with pytest.raises(LuvcError, match="no frame rate to sample by; use --video-frames"):
        load_video(tmp_path, fps=2.0)
    Image.new("RGB", (40, 24)).save(tmp_path / "b.png")
    with pytest.raises(LuvcError, match="different sizes"):
        load_video(tmp_path)


@pytest.mark.parametrize("link", ["the folder itself", "a link that loops", "a broken link"])
def test_a_frame_that_is_no_image_file_is_named_with_the_video_flag(tmp_path, link):
    Image.new("RGB", (32, 24)).save(tmp_path / "a.png")
    target = {"the folder itself": tmp_path, "a link that loops": tmp_path / "b.png", "a broken link": tmp_path / "x"}
    (tmp_path / "b.png").symlink_to(target[link])
    with pytest.raises(LuvcError, match=r"b.png in the frames folder .* is no image file .* to --video again") as error:
        load_video(tmp_path)
    assert "--image" not in str(error.value)


def test_qwen_pixels_put_consecutive_frames_in_one_temporal_patch():
    # The image processor repeats one image over the temporal patch (T = 2); a video's slice j holds frames 2j and
    # 2j + 1 at temporal positions 0 and 1, channels outermost (the video processor's layout); 5 frames pad to 6.
    processor = load_model("tiny-qwen2-vl").image_processor
    video = synthetic_video(5, 112, 168)
    pixels, grid = qwen_video_pixels(video.frames, processor, 2)
    units = 8 * 12
    assert grid.tolist() == [[3, 8, 12]] and pixels.shape == (3 * units, 3 * 2 * 14 * 14)

    def alone(frame):  # (units, C, T, p * p) of one frame as an image
        return processor(images=[frame], return_tensors="np")["pixel_values"].reshape(units, 3, 2, -1)

    slices = pixels.reshape(3, units, 3, 2, -1)
    assert np.array_equal(slices[0][:, :, 0], alone(video.frames[0])[:, :, 0])
    assert np.array_equal(slices[0][:, :, 1], alone(video.frames[1])[:, :, 0])
    assert np.array_equal(slices[1][:, :, 1], alone(video.frames[3])[:, :, 0])
    assert np.array_equal(slices[2], alone(video.frames[4]))  # the last frame, repeated
