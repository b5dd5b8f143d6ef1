"""Run by tests/test_zero3_export.py under torchrun: CPT under ZeRO-3 through the real
``train_stage``, plus a callback that gathers the partitioned weights in memory at the
end of training and saves them (rank 0) for comparison with the consolidated ``final/``.

    torchrun --standalone --nproc-per-node 2 tests/distributed_scripts/zero3_gather.py OUT_DIR
"""

import sys
from pathlib import Path

import deepspeed
from safetensors.torch import save_file
from transformers import TrainerCallback

from stages import distributed, pipeline
from stages.config import load_config
from stages.cpt import cpt_stage
from stages.training import train_stage


class GatherAtTrainEnd(TrainerCallback):
    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_end(self, args, state, control, model=None, **kwargs):
        params = dict(model.named_parameters())
        # Only tensors below stage3_param_persistence_threshold (10 x hidden: the norms) stay whole.
        partitioned = sum(p.ds_numel for p in params.values() if p.numel() == 0)
        assert partitioned > 0.95 * sum(p.ds_numel for p in params.values()), "ZeRO-3 partitioned too little"
        with deepspeed.zero.GatheredParameters(list(params.values())):  # every rank joins the all-gather
            if distributed.current().is_writer:
                save_file({n: p.detach().clone().contiguous() for n, p in params.items()}, str(self.path))


def main(out: Path) -> None:
    cfg = load_config("configs/tiny.yaml", [f"run.output_dir={out}", "cpt.deepspeed=configs/deepspeed/zero3.json",
                                            "cpt.max_steps=4", "cpt.save_steps=0", "tracking.wandb.mode=disabled"])
    run = pipeline.open_run(cfg)
    pipeline.run_step(run, "prepare")
    stage = cpt_stage(cfg, run.base, run.data, run.dir / "cpt")
    train_stage(cfg.cpt, stage, [GatherAtTrainEnd(out / "gathered.safetensors")])
    distributed.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
