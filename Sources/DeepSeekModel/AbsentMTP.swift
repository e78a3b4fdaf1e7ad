import Foundation
import SafeTensors
import Synchronization

/// Directories already noted as holding no MTP weights: a run that opens one several times says it once.
private let notedWithoutMTP = Mutex<Set<String>>([])

/// V3-family checkpoints saved by transformers declare MTP layers they do not hold.
///
/// transformers' `DeepseekV3ForCausalLM` has no multi-token-prediction module: it ignores the published
/// `model.layers.61.*` on load, and `save_pretrained` (every fine-tune saved through it) writes the main
/// model alone while config.json keeps `num_nextn_predict_layers: 1`. Such a checkpoint is the main model,
/// whole: every stage converts it as such, expecting no MTP tensor, and leaves config.json as it was (an
/// engine loads the main model the same way; speculative decoding with MTP needs weights no tool can make).
/// A checkpoint holding some but not all of an MTP layer's tensors is still reported, tensor by tensor.
extension DeepSeekConfig {
    /// The MTP layers config.json declares when `checkpoint` holds no tensor of any of them, else 0.
    public func declaredMTPLayersWithoutWeights(in checkpoint: Checkpoint) -> Int {
        guard mtpLayerCount > 0 else { return 0 }
        let prefixes = mtpLayers.map(TensorNames.layer)
        let holdsAny = checkpoint.tensors.contains { t in prefixes.contains { t.name.hasPrefix($0) } }
        return holdsAny ? 0 : mtpLayerCount
    }

    /// This config as `checkpoint` holds it: without MTP layers when it holds none of their weights (a note
    /// says so once per process, naming `model`, the checkpoint's directory by default), else unchanged.
    public func matching(_ checkpoint: Checkpoint, model: String? = nil) -> DeepSeekConfig {
        withoutMTPLayers(declaredMTPLayersWithoutWeights(in: checkpoint) > 0, model: model ?? checkpoint.directory.path)
    }

    /// Without its MTP layers when `absent` (noting it once per process for `model`), else unchanged: for a
    /// sharded output, decided once from the device that holds the dense weights and applied to every device.
    public func withoutMTPLayers(_ absent: Bool, model: String) -> DeepSeekConfig {
        guard absent, mtpLayerCount > 0 else { return self }
        if notedWithoutMTP.withLock({ $0.insert(model).inserted }) {
            Diagnostics.note("note: \(model): config.json declares \(mtpLayerCount) MTP layer(s) (num_nextn_predict_layers) "
                             + "but no weights of them (as transformers saves V3): taking it as the main model, which is whole")
        }
        var adapted = self
        adapted.numNextnPredictLayers = 0
        return adapted
    }
}

extension ConfigDocument {
    /// The document as `checkpoint` holds it (`DeepSeekConfig.matching`): the typed view without MTP layers
    /// whose weights are absent; the JSON, which stages write, unchanged.
    public func matching(_ checkpoint: Checkpoint) -> ConfigDocument {
        guard model.declaredMTPLayersWithoutWeights(in: checkpoint) > 0 else { return self }
        var adapted = self
        adapted.withoutMTPWeights = true
        adapted.model = model.withoutMTPLayers(true, model: checkpoint.directory.path)
        return adapted
    }
}
