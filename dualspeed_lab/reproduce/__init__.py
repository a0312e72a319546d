"""The paper-table driver: `python -m dualspeed_lab.reproduce --help`.

Modules, in the order a run uses them (each imports only those above it):

    common    REPO, SCHEMA, CONV_MODE, QUESTION_TYPES; short_hash, read_json, write_json
    presets   Preset and the quick / full / smoke presets
    plan      Stage, EvalSpec, Cell; variant_catalog, table_variants, plan_cells
    assets    the toy task, the base models and the test questions (prepare_task, prepare_models, ...)
    runner    Runner: one cell's training stages and evaluations as subprocesses, scored and cached
    stats     Stat, Results, load_cells: the cell JSONs aggregated over seeds
    tables    Table: Markdown and CSV
    plots     ReportPlots: the PNG figures
    report    Report: the paper's tables and figures
    summary   effects, write_summary: summary.md and effects.json
    cli       build_parser, resolve_preset, estimate_seconds, main
"""
