"""Save the pictures an audit logged to TensorBoard as PNG files (the README's discovery pictures).

Usage::

    python docs/audit_pictures.py outputs/ruler_bias/discovery_biased docs/images/discovery_demo_biased \
        --tags audit/discovery/candidates audit/discovery/strategies

Reads the event files under the audit folder with TensorBoard's own reader and writes the last
image of each tag to ``<prefix>_<last part of the tag>.png`` (here
``docs/images/discovery_demo_biased_candidates.png`` and ``..._strategies.png``).

Exit status: 0 when every tag was written, 1 when a tag is not in the events.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("audit", type=Path, help="an audit's --out folder (or any folder with event files)")
    parser.add_argument("prefix", type=Path, help="where the PNGs go: <prefix>_<tag's last part>.png")
    parser.add_argument("--tags", nargs="+", default=["audit/discovery/candidates", "audit/discovery/strategies"])
    args = parser.parse_args()
    events = EventAccumulator(str(args.audit), size_guidance={IMAGES: 0})
    events.Reload()
    missing = [tag for tag in args.tags if tag not in events.Tags()[IMAGES]]
    if missing:
        found = events.Tags()[IMAGES]
        print(f"audit_pictures: {missing} not among the images in {args.audit}: {found}", file=sys.stderr)
        return 1
    args.prefix.parent.mkdir(parents=True, exist_ok=True)
    for tag in args.tags:
        path = args.prefix.with_name(f"{args.prefix.name}_{tag.rsplit('/', 1)[-1]}.png")
        path.write_bytes(events.Images(tag)[-1].encoded_image_string)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
