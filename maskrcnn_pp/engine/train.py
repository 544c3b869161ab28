"""What ``tools/train_net.py`` runs: train, resume or evaluate from parsed arguments."""
from __future__ import annotations

from detectron2.evaluation import verify_results
from detectron2.utils import comm

from ..utils.errors import UserError, exit_on_user_error
from .checkpoint import last_checkpoint, load_trained_model
from .config import setup
from .launch import launch
from .trainer import NonFiniteLossError, Trainer


def run(args):
    """One process's work: ``--eval-only`` evaluation, or training (resumed with --resume)."""
    allow_unsafe_pickle = getattr(args, "allow_unsafe_pickle", False)
    cfg = setup(args)
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
    """Start ``run`` on ``args.num_gpus`` processes per machine (one process: in place)."""
    launch(run, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
    return 0

