"""Data sources (MedMNIST npz files, synthetic lesions, image folders) and the input pipeline."""
