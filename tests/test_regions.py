"""Face-region masks from 68 landmarks: coverage on a real photo, disjoint regions, edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from v2s_nb.face.regions import (PRIORITY, REGIONS, RegionMasks, masks_from_landmarks, region_masks,
                                 template_landmarks)


def _inside(mask, pts):
    q = np.rint(pts).astype(int)
    return mask[q[:, 1], q[:, 0]]


def _check_partition(masks):
    assert list(masks) == list(REGIONS)
    total = sum(m.astype(np.int64) for m in masks.values())
    assert (total == 1).all(), "regions overlap or leave pixels out"
    np.testing.assert_array_equal(masks["rest"], ~(masks["eyes"] | masks["nose"] | masks["mouth"]))


@pytest.fixture(scope="module")
def astronaut_landmarks():
    from skimage import data

    try:
        from v2s_nb.face import landmarks
    except ImportError as e:  # pragma: no cover - the landmark module is written in parallel
        pytest.skip(f"v2s_nb.face.landmarks is not available yet ({e})")
    img = data.astronaut()
    track = landmarks(img, upsample=0, progress=False)
    assert track.found.all(), "dlib found no face in the astronaut photo"
    return img, track


def test_astronaut_landmark_masks(astronaut_landmarks):
    img, track = astronaut_landmarks
    masks = masks_from_landmarks(track, None)  # image size from the track
    assert isinstance(masks, RegionMasks) and masks.source == "landmarks" and masks.found.tolist() == [True]
    assert masks["eyes"].shape == (1, 512, 512)
    _check_partition(masks)
    p = track.points[0]
    assert _inside(masks["eyes"][0], p[36:48]).all()  # every eye landmark
    assert _inside(masks["mouth"][0], p[48:68]).all()  # outer and inner lip points
    assert _inside(masks["nose"][0], p[30:36]).all()  # tip and nostrils
    # sizes that make sense for a face ~90 px wide: a few hundred pixels each, eyes split in two blobs
    for name in ("eyes", "nose", "mouth"):
        assert 150 < masks[name][0].sum() < 3000, name
    import cv2

    n_blobs, _ = cv2.connectedComponents(masks["eyes"][0].astype(np.uint8))
    assert n_blobs - 1 == 2
    # the same through the single entry point
    again = region_masks(img, landmarks=track, source="landmarks")
    for k in REGIONS:
        np.testing.assert_array_equal(again[k], masks[k])


def _hull(p, size):
    import cv2

    m = np.zeros((size, size), np.uint8)
    hull = cv2.convexHull(p.astype(np.float32)).reshape(-1, 2)
    cv2.fillPoly(m, [np.rint(hull * 16).astype(np.int32)], 1, shift=4)
    return m.astype(bool)[None]


def test_overlaps_follow_the_priority():
    p = template_landmarks(128)
    p[28:36, 1] += 18  # push the nose down into the mouth
    p[27] = p[36:42].mean(0)  # and the top of its bridge into the left eye
    masks = masks_from_landmarks(p, 128, dilate=0)
    _check_partition(masks)
    assert PRIORITY == ("mouth", "eyes", "nose")
    nose = _hull(p[27:36], 128)
    assert (nose & masks["mouth"]).any() and (nose & masks["eyes"]).any()
    # the mouth keeps its whole hull, the eyes theirs minus the mouth, the nose what is left
    np.testing.assert_array_equal(masks["mouth"], _hull(p[48:68], 128))
    np.testing.assert_array_equal(masks["eyes"], (_hull(p[36:42], 128) | _hull(p[42:48], 128)) & ~masks["mouth"])
    np.testing.assert_array_equal(masks["nose"], nose & ~masks["mouth"] & ~masks["eyes"])


def test_shapes_dilation_and_missing_faces():
    p = template_landmarks(100)
    one = masks_from_landmarks(p, (100, 80), dilate=0)  # [68, 2] -> N = 1; image_size is (width, height)
    assert one["mouth"].shape == (1, 80, 100)
    auto = masks_from_landmarks(p, (100, 80))  # 5% of a 37 px eye-corner distance: 2 px
    grown = masks_from_landmarks(p, (100, 80), dilate=3)
    for k in ("eyes", "mouth"):
        assert one[k].sum() < auto[k].sum() < grown[k].sum()
        assert not (one[k] & ~auto[k]).any() and not (auto[k] & ~grown[k]).any()
    both = masks_from_landmarks(np.stack([p, np.full((68, 2), np.nan)]), 100)
    assert both.found.tolist() == [True, False]
    assert not any(both[k][1].any() for k in ("eyes", "nose", "mouth")) and both["rest"][1].all()
    _check_partition(both)
    with pytest.raises(ValueError, match="68"):
        masks_from_landmarks(np.zeros((5, 2)), 64)
    with pytest.raises(ValueError, match="dilate"):
        masks_from_landmarks(p, 64, dilate=-1)


def test_region_masks_without_images_and_overlay():
    p = template_landmarks(64)
    masks = region_masks(None, landmarks=p[None], source="landmarks", image_size=64)
    assert masks.shape == (1, 64, 64) and "landmarks" in repr(masks)
    assert masks.label_map().max() <= 3
    img = np.full((1, 64, 64, 3), 128, np.uint8)
    over = masks.overlay(img)
    assert over.dtype == np.uint8 and (over[masks["mouth"]][:, 0] > 128).all()
    assert (over[masks["rest"]] == 128).all()
    with pytest.raises(ValueError, match="source"):
        region_masks(img, source="segformer")


def test_region_masks_size_and_count_come_from_the_pictures():
    """The mask size is read through as_rgb_uint8 (grey clips / images too), and images, landmarks and
    image_size must agree: a mismatch raises instead of giving masks of another size or count."""
    from v2s_nb.face import LandmarkTrack

    p = template_landmarks(64)
    imgs = np.full((5, 48, 64), 128, np.uint8)  # grey clip [T, H, W], W != H (T not 3 or 4: unambiguous)
    pts = np.repeat(p[None], 5, 0)
    assert region_masks(imgs, pts, source="landmarks").shape == (5, 48, 64)
    assert region_masks(imgs[0], p, source="landmarks").shape == (1, 48, 64)  # one grey image [H, W]
    with pytest.raises(ValueError, match=r"2 image\(s\) but landmarks for 5"):
        region_masks(imgs[:2], pts, source="landmarks")
    with pytest.raises(ValueError, match="image_size"):
        region_masks(imgs, pts, source="landmarks", image_size=256)
    track = LandmarkTrack.from_points(pts, 128)  # measured on 128x128 frames
    with pytest.raises(ValueError, match=r"64x48 pixels, but the LandmarkTrack was measured on 128x128"):
        region_masks(imgs, track, source="landmarks")
    with pytest.raises(ValueError, match=r"256x256 pixels but the LandmarkTrack was measured on 128x128"):
        region_masks(None, track, source="landmarks", image_size=256)
    assert region_masks(None, track, source="landmarks").shape == (5, 128, 128)
