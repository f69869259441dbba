// Compile-only stub of the Android framework API (real signatures, no behaviour): see android_demo/tools/README.md.
package android.widget;

import android.content.Context;

public abstract class AbsSpinner extends AdapterView<SpinnerAdapter> {
    public AbsSpinner(Context context) { super(context); throw new RuntimeException("Stub!"); }
    @Override public SpinnerAdapter getAdapter() { throw new RuntimeException("Stub!"); }
    @Override public void setAdapter(SpinnerAdapter adapter) { throw new RuntimeException("Stub!"); }
}
