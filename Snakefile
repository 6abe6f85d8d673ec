# pmi-video: raw videos to PMI sentence localization and captioning results.
# Rules live in workflow/rules/, one file per stage; this file only includes them and
# names the top-level targets.

import sys

from snakemake.utils import min_version

min_version("9.0")

sys.path.insert(0, workflow.basedir)


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/decode.smk"
include: "workflow/rules/extract.smk"
include: "workflow/rules/subsample.smk"
include: "workflow/rules/localization.smk"
include: "workflow/rules/captioning.smk"


rule all:
    default_target: True
    input:
        "results/demo/metrics.json",
