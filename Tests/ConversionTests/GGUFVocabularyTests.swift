import XCTest
@testable import Conversion

/// Whether a GGUF says to add BOS/EOS follows llama.cpp's converter (gguf-py's SpecialVocab): the tokenizer's
/// post-processor before tokenizer_config.json. DeepSeek's own tokenizers (ByteLevel post-processors) are checked
/// against the converter in the cross-check; these are the other forms, by the same rule.
final class GGUFVocabularyTests: XCTestCase {
    private func flags(_ post: [String: Any]?, _ config: [String: Any]) -> [String] {
        GGUFVocabulary.addSpecial(postProcessor: post, tokenizerConfig: config).map { "\($0.0)=\($0.1)" }
    }

    func testPostProcessorBeforeTokenizerConfig() {
        let config: [String: Any] = ["add_bos_token": true, "add_eos_token": false, "bos_token": "<s>", "eos_token": ["content": "</s>"]]
        XCTAssertEqual(flags(["type": "ByteLevel"], config), ["bos=false", "eos=false"], "DeepSeek-V2/R1: ByteLevel says neither")
        let template: [String: Any] = ["type": "TemplateProcessing", "single": [["SpecialToken": ["id": "<s>"]], ["Sequence": ["id": "A"]]]]
        XCTAssertEqual(flags(["type": "Sequence", "processors": [["type": "ByteLevel"], template]], config), ["bos=true", "eos=false"])
        let trailing: [String: Any] = ["type": "TemplateProcessing", "single": [["Sequence": ["id": "A"]], ["SpecialToken": ["id": "</s>"]]]]
        XCTAssertEqual(flags(trailing, config), ["eos=true", "bos=true"], "the template decides EOS, the config BOS")
        XCTAssertEqual(flags(["type": "RobertaProcessing"], [:]), ["bos=true", "eos=true", "sep=true"])
        XCTAssertEqual(flags(nil, config), ["bos=true", "eos=false"], "no post-processor: tokenizer_config.json")
        XCTAssertEqual(flags(nil, [:]), [])
    }
}
