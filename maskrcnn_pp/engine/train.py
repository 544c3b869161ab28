"""What ``tools/train_net.py`` runs: train, resume or evaluate from parsed arguments."""
from __future__ import annotations

from detectron2.evaluation import verify_results
from detectron2.utils import comm

from ..utils.errors import UserError, exit_on_user_error
from ..utils.io import check_output_dir
from .checkpoint import last_checkpoint, load_trained_model
from .config import load_config, setup
from .launch import launch
from .run_folder import RunFolderLock, check_earlier_run
from .trainer import NonFiniteLossError, Trainer


def run(args, cfg=None):
    """One process's work: ``--eval-only`` evaluation, or training (resumed with --resume),
    from the config ``launch_from_args`` loaded (or from ``args``)."""
    allow_unsafe_pickle = getattr(args, "allow_unsafe_pickle", False)
    cfg = setup(args, cfg)
    if args.eval_only:
        last = last_checkpoint(cfg.OUTPUT_DIR) if args.resume else ""
        model = load_trained_model(cfg, last or cfg.MODEL.WEIGHTS,
                                   allow_unsafe_pickle=allow_unsafe_pickle)
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
        return results
    trainer = Trainer(cfg, allow_unsafe_pickle=allow_unsafe_pickle)
    trainer.resume_or_load(resume=args.resume)
    try:
        return trainer.train()
    except (FloatingPointError, NonFiniteLossError) as err:
        advice = (f"the last checkpoint in {cfg.OUTPUT_DIR} is intact: lower SOLVER.BASE_LR "
                  "or check the data, then --resume" if trainer.checkpointer.has_checkpoint()
                  else "no checkpoint was written: lower SOLVER.BASE_LR or check the data, "
                       "then train again")
        raise UserError(f"training stopped: {str(err).splitlines()[0]}; {advice}") from None


@exit_on_user_error
def launch_from_args(args) -> int:
    """Start ``run`` on ``args.num_gpus`` processes per machine (one process: in place).

    A training holds its ``OUTPUT_DIR`` (on the first machine) from before the workers start
    until the last one ends, and starts only in a folder without an earlier training unless
    ``--resume`` continues it or ``--overwrite`` replaces it."""
    cfg = load_config(args.config_file, args.opts)

    def start() -> None:
        launch(run, args.num_gpus, num_machines=args.num_machines,
               machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args, cfg))

    if args.eval_only or args.machine_rank != 0:
        start()
        return 0
    output_dir = check_output_dir(cfg.OUTPUT_DIR, "OUTPUT_DIR")
    with RunFolderLock(output_dir):
        check_earlier_run(output_dir, resume=args.resume,
                          overwrite=getattr(args, "overwrite", False))
        start()
    return 0

