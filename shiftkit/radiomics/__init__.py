"""Radiomics from images and masks: PyRadiomics features and deep (CNN) ROI features, one row per case.

- :mod:`shiftkit.radiomics.manifest`: the ``path,mask,site[,label,patient,case_id,mask_label,...]`` manifest;
- :mod:`shiftkit.radiomics.params`: PyRadiomics parameters (the bundled ``params.yaml`` or ``--params``);
- :mod:`shiftkit.radiomics.images` and :mod:`shiftkit.radiomics.masks`: reading an image and its mask, and the
  checks a case must pass (geometry, empty mask, absent label);
- :mod:`shiftkit.radiomics.extract`: one case, and all cases in parallel processes, into a feature table;
- :mod:`shiftkit.radiomics.deep`: the CNN embedding of a crop around the mask;
- :mod:`shiftkit.radiomics.segment`: approximate automatic lesion masks for dermoscopy (HAM10000);
- :mod:`shiftkit.radiomics.outputs`: the CSV, the failures and the JSON summary, written atomically.

PyRadiomics is an optional dependency (``pip install 'shiftkit[radiomics]'``); nothing here imports it until an
extraction runs.
"""
