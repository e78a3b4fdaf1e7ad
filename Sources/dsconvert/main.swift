import CLI
import DSConvertCommands
import Foundation

exit(Entry.front(tool: "dsconvert", abstract: DSConvertCommands.abstract,
                              commands: DSConvertCommands.all))
