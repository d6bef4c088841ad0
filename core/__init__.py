"""What the service and the training worker both need, depending on neither: settings, the label store, the
labeling-config roles, the classifier interface, the evaluation routine, job names and the Label Studio client."""
