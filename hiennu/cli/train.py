"""``hiennu_train DATASET TRAINER [FOLD]``: train one fold of a preprocessed dataset."""

from __future__ import annotations

import argparse

from hiennu.cli._common import run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hiennu_train",
        description="Train the plans' 3D U-Net on one fold of a preprocessed dataset with the loss the trainer "
                    "names. Output: $hiennu_results/DatasetNNN_Name/TRAINER__hiennuPlans__CONFIG/fold_K/.")
    p.add_argument("dataset", help="dataset name (BONBID), folder name (Dataset001_BONBID) or number (1)")
    p.add_argument("trainer", help="TrainerDice, TrainerDiceFocal, TrainerTversky, TrainerHDT, TrainerDiceFocalHDT, "
                                   "TrainerTverskyHDT, or your own as MODULE:CLASS")
    p.add_argument("fold", nargs="?", default="0", help="0-4 or 'all' (default 0)")
    p.add_argument("-c", "--configuration", default=None, help="plans configuration (default: the plans' default)")
    p.add_argument("--trainer-module", default=None, help="importable module that defines TRAINER")
    p.add_argument("--epochs", type=int, default=None, help="maximum epochs (plans: 100)")
    p.add_argument("--patience", type=int, default=None,
                   help="stop after this many epochs without improvement of validation Dice (plans: 10)")
    p.add_argument("--batch-size", type=int, default=None, help="global batch size (plans: 4)")
    p.add_argument("--lr", type=float, default=None, help="initial learning rate (plans: 1e-3)")
    p.add_argument("--iterations-per-epoch", type=int, default=None,
                   help="steps per epoch (plans: one pass over the training cases)")
    p.add_argument("--num-workers", type=int, default=None, help="data-augmentation worker processes (plans: 2)")
    p.add_argument("--device", choices=("cpu", "cuda", "mps"), default=None, help="default: best available")
    p.add_argument("--num-gpus", type=int, default=1,
                   help="data-parallel processes (DDP; NCCL on GPUs, gloo on CPU); the batch is split across them")
    p.add_argument("--compile", action="store_true", help="torch.compile the network")
    p.add_argument("--continue", dest="resume", action="store_true",
                   help="resume from checkpoint_latest.pth exactly where the run stopped")
    p.add_argument("--seed", type=int, default=12345, help="random seed (default 12345)")
    p.add_argument("--val-every", type=int, default=1, help="validate every N epochs (default 1)")
    p.add_argument("--no-final-validation", dest="final_validation", action="store_false",
                   help="skip predicting and scoring the validation cases in native geometry at the end")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def go() -> None:
        from hiennu.training.launch import train
        from hiennu.training.trainer import TrainingOptions

        options = TrainingOptions(
            dataset=args.dataset, configuration=args.configuration, fold=args.fold, epochs=args.epochs,
            patience=args.patience, batch_size=args.batch_size, learning_rate=args.lr,
            iterations_per_epoch=args.iterations_per_epoch, num_workers=args.num_workers, device=args.device,
            num_gpus=args.num_gpus, compile=args.compile, resume=args.resume, seed=args.seed,
            val_every=args.val_every, final_validation=args.final_validation)
        train(options, args.trainer, args.trainer_module)

    return run(go, verbose=not args.quiet)


if __name__ == "__main__":
    raise SystemExit(main())
