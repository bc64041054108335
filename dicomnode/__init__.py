"""dicomnode: the DICOM service around glipcore (SCP, queue, worker, outputs, delivery)."""

__version__ = "0.1.0"
