"""sedsft: SED-SFT -> GRPO -> evaluation on math reasoning, as one Snakemake workflow."""

__version__ = "0.1.0"
