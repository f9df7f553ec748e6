"""Input pipelines: PaddleClas-exact eval transforms, file lists, tfds, scikit-learn digits."""
