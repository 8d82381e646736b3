"""Installable package for score_sde: score-based generative modeling through SDEs, in modern JAX."""
from setuptools import find_packages, setup

setup(
    name="score_sde",
    version="0.1.0",
    description="Score-based generative modeling through SDEs (Song et al. 2021) and DDPM (Ho et al. 2020) in JAX/Flax",
    python_requires=">=3.10",
    packages=find_packages(include=["score_sde", "score_sde.*", "configs", "configs.*"]),
    install_requires=[
        "jax>=0.7,<0.11",
        "flax>=0.11,<0.13",
        "optax>=0.2.5,<0.3",
        "orbax-checkpoint>=0.11,<0.13",
        "clu>=0.0.12,<0.1",
        "tensorboard>=2.17,<2.22",
        "tensorflow-cpu>=2.17,<2.22",
        "tensorflow-datasets>=4.9.7,<4.10",
        "ml-collections>=1.0,<1.2",
        "absl-py>=2.1,<3",
        "numpy>=1.26,<3",
        "scipy>=1.13,<2",
        "diffrax>=0.7.2,<0.8",
        "scikit-learn>=1.5,<2",
        "pillow>=10,<14",
        "tqdm>=4.60,<5",
    ],
    # the C++ sources that score_sde/cpu_kernels compiles on first use
    package_data={"score_sde.cpu_kernels": ["*.cc"]},
    extras_require={
        # native CPU kernels for the train step (score_sde/cpu_kernels: oneDNN convolutions, fused GroupNorm);
        # wheels exist for Linux x86-64 only. Without them training.conv_impl='auto' uses XLA's ops.
        "cpu": [
            "onednn-cpu-gomp==2023.2.0; platform_system == 'Linux' and platform_machine == 'x86_64'",
            "onednn-devel-cpu-gomp==2023.2.0; platform_system == 'Linux' and platform_machine == 'x86_64'",
        ],
        "test": ["pytest>=8,<10", "pytest-xdist>=3.6,<4", "torch==2.13.0", "matplotlib>=3.8,<4"],
        # plots (score_sde/latents.py: the rate-distortion curve)
        "plot": ["matplotlib>=3.8,<4"],
        # reading the PyTorch port's .pth checkpoints (score_sde/pretrained.py)
        "torch": ["torch>=2.4"],
    },
)
