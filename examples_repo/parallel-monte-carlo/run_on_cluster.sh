#!/bin/bash
#SBATCH --job-name=monte-carlo
#SBATCH --cpus-per-task=8
#SBATCH --time=00:10:00
# Run the notebook as a batch job on one node.
jupyter nbconvert --to notebook --execute monte_carlo.ipynb --output monte_carlo-run.ipynb
