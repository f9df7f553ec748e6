"""A tiny tfds image classification dataset, generated locally."""

import numpy as np
import tensorflow_datasets as tfds


class VitjaxTestShapes(tfds.core.GeneratorBasedBuilder):
    """A tiny image classification dataset built locally: squares vs. stripes vs. noise."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(24, 24, 3)),
                    "label": tfds.features.ClassLabel(names=["squares", "stripes", "noise"]),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(30, 0), "validation": self._generate_examples(12, 1)}

    def _generate_examples(self, count, seed):
        rng = np.random.RandomState(seed)
        for i in range(count):
            yield i, {"image": rng.randint(0, 255, (24, 24, 3), np.uint8), "label": i % 3}
