"""Tests of siriib_jax.data's `InputPipeline`: the training order as a function of (seed, step),
host shards, the held-out validation split, evaluation batches."""

import numpy as np
import pytest

from siriib_jax import data
from tests.data_helpers import dataset_config, ids, npz_pipeline


def test_training_order_is_a_function_of_seed_and_step(npz_dir):
  full = npz_pipeline(npz_dir, seed=5)
  from_zero = [full.train_batch(s) for s in range(50)]  # 22 steps per epoch: spans 3 epochs.
  resumed = npz_pipeline(npz_dir, seed=5).train_batches(start_step=17)
  for step in range(17, 50):
    batch = next(resumed)
    for key in ("image", "label", "index"):
      np.testing.assert_array_equal(batch[key], from_zero[step][key])
  assert from_zero[0]["image"].dtype == np.uint8 and from_zero[0]["label"].dtype == np.int32
  index_of = {}  # "index" names the same example in every epoch.
  for batch in from_zero:
    for i, example in zip(batch["index"], ids(batch["image"])):
      assert index_of.setdefault(i, example) == example
  assert 880 <= len(index_of) and set(index_of) <= set(range(900))
  assert from_zero[0]["index"].dtype == np.int32
  other_seed = npz_pipeline(npz_dir, seed=6).train_batch(0)
  assert not np.array_equal(ids(other_seed["image"]), ids(from_zero[0]["image"]))
  assert not np.array_equal(ids(from_zero[22]["image"]), ids(from_zero[0]["image"]))


def test_host_shards_are_disjoint_and_cover_the_epoch(npz_dir):
  hosts = [npz_pipeline(npz_dir, batch=40, process_index=p, process_count=4) for p in range(4)]
  per_host = [np.concatenate([ids(h.train_batch(s)["image"]) for s in range(22)]) for h in hosts]
  assert all(len(shard) == 22 * 10 for shard in per_host)
  everything = np.concatenate(per_host)
  assert len(set(everything)) == len(everything) == 880  # 900 training examples, 20 dropped.
  single = npz_pipeline(npz_dir, batch=40)
  for step in (0, 21, 22):
    joined = np.concatenate([h.train_batch(step)["image"] for h in hosts])
    np.testing.assert_array_equal(joined, single.train_batch(step)["image"])


def test_validation_split_is_held_out_stratified_and_fixed(npz_dir):
  pipeline = npz_pipeline(npz_dir)
  held_out = set(ids(pipeline.validation.image))
  trained = set(np.concatenate([ids(pipeline.train_batch(s)["image"]) for s in range(22 * 3)]))
  assert len(held_out) == 100 and not held_out & trained
  assert len(trained) == 900  # Over 3 epochs every remaining example is seen.
  assert list(np.bincount(pipeline.validation.label)) == [10] * 10
  again = npz_pipeline(npz_dir, seed=9)  # The training seed does not move it ...
  assert set(ids(again.validation.image)) == held_out
  other = npz_pipeline(npz_dir, validation_seed=1)  # ... validation_seed does.
  assert set(ids(other.validation.image)) != held_out


def test_eval_batches_pad_and_mask_across_hosts(npz_dir):
  hosts = [npz_pipeline(npz_dir, process_index=p, process_count=2) for p in range(2)]
  per_host = [list(h.eval_batches("test", batch_size=64)) for h in hosts]
  assert [len(b) for b in per_host] == [4, 4]  # ceil(230 / 64)
  seen = []
  for batches in per_host:
    for batch in batches:
      assert batch["image"].shape == (32, 32, 32, 3) and batch["mask"].dtype == bool
      assert not batch["image"][~batch["mask"]].any() and not batch["label"][~batch["mask"]].any()
      seen.extend(ids(batch["image"][batch["mask"]]))
  assert sorted(seen) == list(range(230))
  subset = [list(h.eval_batches("validation", batch_size=20, subset_size=30)) for h in hosts]
  subset_ids = [ids(b["image"][b["mask"]]) for batches in subset for b in batches]
  assert [len(x) for x in subset_ids] == [10, 10, 10, 0]  # Host 0: [0, 10), [20, 30).
  chosen = np.concatenate(subset_ids)
  assert len(set(chosen)) == 30 and set(chosen) <= set(ids(hosts[0].validation.image))
  subset_labels = np.concatenate([b["label"][b["mask"]] for batches in subset for b in batches])
  assert list(np.bincount(subset_labels)) == [3] * 10


def test_eval_only_pipeline_reads_no_training_data():
  config = dataset_config(name="cifar10_sample")
  pipeline = data.InputPipeline(config, global_batch_size=100, seed=0, process_index=0,
                                process_count=1, training=False)
  assert len(pipeline.eval_data("test")) == 1000
  with pytest.raises(ValueError, match="training=False"):
    pipeline.train_batch(0)
