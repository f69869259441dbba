// Compile-only stub of the Android framework API (real signatures, no behaviour): see android_demo/tools/README.md.
package android.widget;

import android.content.Context;
import android.text.Editable;

public class EditText extends TextView {
    public EditText(Context context) { super(context); throw new RuntimeException("Stub!"); }
    @Override public Editable getText() { throw new RuntimeException("Stub!"); }
}
