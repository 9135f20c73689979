"""big_contrast: contrastive pretraining in JAX/Flax."""
import setuptools

setuptools.setup(
    name="big_contrast",
    version="0.1.0",
    description="Contrastive pretraining (SimCLR, MoCo, SwAV, CLIP, SigLIP, ...) in JAX/Flax.",
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["big_contrast*", "configs*", "input_pipeline*",
                                               "tools*"]),
    # CLIP's ImageNet class names and prompt templates (zero-shot evaluation).
    package_data={"big_contrast": ["evaluate/data/*.json"]},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10",
        "flax>=0.12",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "grain>=0.2.12",
        "tensorflow-datasets>=4.9.8",
        "ml_collections>=1.0",
        "clu>=0.0.12",
        "absl-py",
        "numpy",
        "scikit-learn",   # the embedded digits dataset ships with it
        "tensorboardX",   # TensorBoard events without TensorFlow
        "safetensors",    # tools/export_pytorch.py writes weights without needing torch
        # Real images on the host: JPEG decoding at reduced DCT scale (libjpeg-turbo), Pillow
        # for the other formats and CMYK, OpenCV's resize, msgpack records in array_record
        # shards (tools/prepare_data.py; grain reads them without TensorFlow).
        "simplejpeg", "pillow", "opencv-python-headless", "msgpack", "array-record",
    ],
    extras_require={
        # Tokenizers beyond the default byte-level one: SentencePiece models, and the CLIP
        # BPE (regex for its \p{L}/\p{N} word split, ftfy for CLIP's text clean-up).
        "text": ["sentencepiece", "regex", "ftfy"],
        # Loading exports (tools/export_pytorch.py) into the PyTorch libraries; the peers' benchmarks.
        "torch": ["torch>=2.4", "torchvision>=0.19", "timm>=1.0", "open_clip_torch>=2.24"],
        # Weights & Biases logging (config.wandb), off unless enabled.
        "wandb": ["wandb"],
        # Ahead-of-time compilation for TPU topologies on any host (tools/aot_compile.py).
        "tpu": ["jax[tpu]"],
        # pytest-xdist: the suite is compile-bound; two workers cut CI's 2-core wall time ~30%.
        # scikit-image: its bundled sample photos are the tests' real images. jax[tpu]: libtpu,
        # with which tests compile recipes for TPU slices (no TPU needed). wandb: its offline
        # mode is tested.
        "test": ["pytest>=8", "pytest-xdist>=3", "scikit-image", "sentencepiece", "regex", "ftfy",
                 "torch>=2.4", "torchvision>=0.19", "timm>=1.0", "open_clip_torch>=2.24",
                 "jax[tpu]", "wandb"],
    },
)
