"""The harder synthetic set's options (shared outfits, occlusion): off by default, and doing what they say."""
import hashlib
import os

import numpy as np
import pytest
from PIL import Image

from data.synthetic import _World, make_market1501

SMALL = {"num_ids": 4, "num_cams": 2, "images_per_id_cam": 2, "height": 32, "width": 16, "seed": 3}


def folder_digest(folder):
    digest = hashlib.sha256()
    for root, _, names in sorted(os.walk(folder)):
        for name in sorted(names):
            path = os.path.join(root, name)
            digest.update(os.path.relpath(path, folder).encode())
            with open(path, "rb") as handle:
                digest.update(handle.read())
    return digest.hexdigest()


def test_defaults_give_the_images_they_gave_before_the_options(tmp_path):
    # Digest of this call's files before `outfits` and `occlusion` were added (same pinned Pillow).
    assert folder_digest(make_market1501(tmp_path, **SMALL)) == (
        "c67d98cbcda332a68290ecd80e0287ce0f7c0975cee2d7916afc84b52a30c7ca")
    explicit = make_market1501(tmp_path / "explicit", outfits=None, occlusion=0.0, **SMALL)
    assert folder_digest(explicit) == folder_digest(os.path.join(tmp_path, "market1501"))


def test_shared_outfits_make_identities_of_one_outfit_wear_near_colours():
    plain = _World(12, 2, 32, 16, seed=0)
    shared = _World(12, 2, 32, 16, seed=0, outfits=3, outfit_spread=0.05)

    def shirt_gap(world, a, b):
        return float(np.abs(world.looks[a].shirt - world.looks[b].shirt).max())

    same_outfit = [shirt_gap(shared, i, i + 3) for i in range(9)]  # i and i + 3 share outfit i mod 3
    assert max(same_outfit) < 0.4 and all(g > 0 for g in same_outfit)
    assert {shared.looks[i].pattern for i in range(0, 12, 3)} == {shared.looks[0].pattern}
    assert np.mean(same_outfit) < np.mean([shirt_gap(plain, i, i + 3) for i in range(9)])


def test_occlusion_changes_every_person_crop_only_when_asked():
    plain = _World(2, 2, 32, 16, seed=0)
    occluded = _World(2, 2, 32, 16, seed=0, occlusion=1.0)
    for identity, cam, shot in ((0, 0, 0), (1, 1, 1), (0, 1, 2)):
        clean, covered = plain.person(identity, cam, shot), occluded.person(identity, cam, shot)
        differs = np.abs(clean.astype(int) - covered.astype(int)).max(axis=2) > 40
        assert 0.05 < differs.mean() < 0.9  # a part of the crop, not none and not all of it


def test_harder_set_is_written_in_market_layout(tmp_path):
    folder = make_market1501(tmp_path, outfits=2, occlusion=0.5, **SMALL)
    query = sorted(os.listdir(os.path.join(folder, "query")))
    assert [n[:7] for n in query] == ["0003_c1", "0003_c2", "0004_c1", "0004_c2"]
    with Image.open(os.path.join(folder, "query", query[0])) as image:
        assert image.size == (16, 32)


@pytest.mark.parametrize("options", [{"outfits": 0}, {"occlusion": 1.5}, {"outfit_spread": -0.1}])
def test_bad_options_are_refused_before_writing(tmp_path, options):
    with pytest.raises(ValueError):
        make_market1501(tmp_path, **SMALL, **options)
    assert not os.path.exists(tmp_path / "market1501")
