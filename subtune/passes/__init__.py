"""ONNX-level passes over an onnx-ir model, in the onnx-ir `PassBase` style: one file per
transformation or check, each returning `PassResult(model, modified)`."""

from subtune.passes.attach_metadata import AttachMetadataPass
from subtune.passes.name_batch_dim import NameBatchDimPass
from subtune.passes.name_stream_nodes import NameStreamNodesPass
from subtune.passes.record_stream_roles import RecordStreamRolesPass
from subtune.passes.strip_export_metadata import StripExportMetadataPass
from subtune.passes.task_rows_from_mask import TaskRowsFromMaskPass
from subtune.passes.tensorrt_compat import CheckTensorRTCompatPass, TensorRTCompatError

__all__ = ["AttachMetadataPass", "CheckTensorRTCompatPass", "NameBatchDimPass", "NameStreamNodesPass",
           "RecordStreamRolesPass", "StripExportMetadataPass", "TaskRowsFromMaskPass", "TensorRTCompatError"]
