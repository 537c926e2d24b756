"""Generate a video with the DiT, optionally with LoRAs: see docs/interop.md.

python hv_generate_video.py --dit demo/models/tiny_dit.safetensors --vae demo/models/vae \
    --text_encoder1 demo/models/text_encoder --text_encoder2 demo/models/text_encoder_2 \
    --prompt "a red ball rolls across a blue floor" --video_size 64 64 --video_length 5 --infer_steps 4 \
    --seed 42 --lora_weight demo/output/tiny_lora.safetensors --save_path demo/output/generated
"""

import sys


def main(argv=None) -> int:
    from generation.options import parse_generate
    from hv_common.cli import run_command

    def command(args) -> int:
        config = parse_generate(args)
        from generation.generate import run

        return run(config)

    return run_command(command, argv)


if __name__ == "__main__":
    sys.exit(main())
