"""The paper's analyses beyond its accuracy tables (paper §5, App. C; docs/analysis.md),
and the report's sections built from them. A pure library; import the modules themselves:

* `xavg`: SiRIIB's x_avg and the rows of Fig. 4, 9, 10, 11;
* `scorecam`: Score-CAM heatmaps (Fig. 7);
* `features`: the backbone's last feature map and penultimate features, captured;
* `tsne`: t-SNE of penultimate features on common axes (Fig. 8);
* `corruptions`: CIFAR-10-C accuracy per corruption and severity (Table 9);
* `paper_sections`: each table and figure of `--mode=paper`'s report (and the IB path's
  health) built from trained runs as a `Section`, and `Run`, `Context`, `SECTIONS`.

Nothing is imported here, so that importing one module does not load the others'
libraries (scikit-learn, matplotlib). Arrays are computed apart from drawing: a figure is
`rows = xavg.…_rows(…)` (or `scorecam.heatmap_rows`), then
`plotting.save_png(plotting.image_grid(rows), path)` (`siriib_jax/plotting.py`, the one
home of matplotlib, shared with the evaluation's figures).
"""
